{{/* Names */}}
{{- define "cap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cap.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cap.version" -}}{{ .Chart.AppVersion }}{{- end -}}

{{- define "cap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "cap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cap.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cap.adapterName" -}}{{ include "cap.fullname" . }}-metrics-adapter{{- end -}}

{{/* Labels: call with (dict "root" $ "component" "api") */}}
{{- define "cap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cap.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "cap.labels" -}}
{{ include "cap.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Secrets the pods read. The migration hook runs before the release's own
Secrets exist, so in its context (.Hook) the chart-made values come from a
hook Secret of their own. */}}
{{- define "cap.madeSecretName" -}}
{{- if .Hook -}}{{ include "cap.fullname" . }}-migrate{{- else -}}{{ include "cap.fullname" . }}-{{ .suffix }}{{- end -}}
{{- end -}}
{{- define "cap.mongoSecretName" -}}
{{- default (include "cap.madeSecretName" (merge (dict "suffix" "mongo") .)) .Values.mongo.existingSecret -}}
{{- end -}}
{{- define "cap.kekSecretName" -}}
{{- default (include "cap.madeSecretName" (merge (dict "suffix" "kek") .)) .Values.kek.file.existingSecret -}}
{{- end -}}
{{- define "cap.pinSecretName" -}}
{{- default (include "cap.madeSecretName" (merge (dict "suffix" "pkcs11-pin") .)) .Values.kek.pkcs11.existingSecret -}}
{{- end -}}

{{/* Render-time checks of settings that a schema cannot express. */}}
{{- define "cap.validate" -}}
{{- if not (or .Values.mongo.uri .Values.mongo.existingSecret) -}}
{{- fail "mongo.uri or mongo.existingSecret is required (CAP_MONGO_URI comes from a Secret)" -}}
{{- end -}}
{{- if and (eq .Values.kek.provider "file") (not (or .Values.kek.file.keyRing .Values.kek.file.existingSecret)) -}}
{{- fail "kek.provider is file: kek.file.keyRing or kek.file.existingSecret is required (make a key ring with `certautopilot kek init --file kek.json`)" -}}
{{- end -}}
{{- if and (eq .Values.kek.provider "pkcs11") (not (or .Values.kek.pkcs11.pin .Values.kek.pkcs11.existingSecret)) -}}
{{- fail "kek.provider is pkcs11: kek.pkcs11.pin or kek.pkcs11.existingSecret is required (CAP_PKCS11_PIN)" -}}
{{- end -}}
{{- $drain := int .Values.config.shutdownGraceSecs -}}
{{- range $w := list "api" "worker" "scheduler" "metricsAdapter" -}}
{{- $grace := int (index $.Values $w).terminationGracePeriodSeconds -}}
{{- if le $grace $drain -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be longer than config.shutdownGraceSecs (%d), the drain it waits for" $w $grace $drain) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.api.tls.enabled (not .Values.api.tls.secretName) -}}
{{- fail "api.tls.enabled needs api.tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.backup.enabled (not .Values.backup.volume.existingClaim) -}}
{{- fail "backup.enabled needs backup.volume.existingClaim: the PersistentVolumeClaim the snapshots are written to (the chart makes none, so uninstalling keeps them)" -}}
{{- end -}}
{{- end -}}

{{/* Queued jobs per worker that the autoscaler aims for. */}}
{{- define "cap.queuedPerWorker" -}}
{{- if gt (int .Values.autoscaling.queuedPerWorker) 0 -}}
{{- .Values.autoscaling.queuedPerWorker -}}
{{- else -}}
{{- .Values.config.workerConcurrency -}}
{{- end -}}
{{- end -}}

{{/* Environment of every container that runs a role, migrate or fleet wait. */}}
{{- define "cap.env" -}}
- name: CAP_MONGO_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "cap.mongoSecretName" . }}
      key: {{ .Values.mongo.existingSecretKey }}
- name: CAP_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: CAP_HTTP_ADDR
  value: "0.0.0.0:8080"
- name: CAP_METRICS_ADDR
  value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
- name: CAP_SHUTDOWN_GRACE_SECS
  value: {{ .Values.config.shutdownGraceSecs | quote }}
- name: CAP_WORKER_CONCURRENCY
  value: {{ .Values.config.workerConcurrency | quote }}
{{- range $purpose, $allow := (.Values.config.egress | default dict) }}
{{- with $allow }}
- name: {{ printf "CAP_EGRESS_ALLOW_%s" (upper $purpose) }}
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with .Values.config.egressAllow }}
- name: CAP_EGRESS_ALLOW
  value: {{ . | quote }}
{{- end }}
- name: CAP_KEK_PROVIDER
  value: {{ .Values.kek.provider | quote }}
{{- if eq .Values.kek.provider "file" }}
- name: CAP_KEK_FILE
  value: {{ printf "%s/%s" .Values.kek.file.mountPath .Values.kek.file.existingSecretKey | quote }}
{{- else }}
- name: CAP_PKCS11_MODULE
  value: {{ .Values.kek.pkcs11.module | quote }}
- name: CAP_PKCS11_TOKEN_LABEL
  value: {{ .Values.kek.pkcs11.tokenLabel | quote }}
- name: CAP_PKCS11_PIN
  valueFrom:
    secretKeyRef:
      name: {{ include "cap.pinSecretName" . }}
      key: {{ .Values.kek.pkcs11.existingSecretKey }}
{{- end }}
{{- range $k, $v := .Values.config.extraEnv }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* Volumes and mounts of the KEK (and a writable /tmp, the only writable path). */}}
{{- define "cap.kekVolumes" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- if eq .Values.kek.provider "file" }}
- name: kek
  secret:
    secretName: {{ include "cap.kekSecretName" . }}
    defaultMode: {{ .Values.kek.file.defaultMode }}
    items:
      - key: {{ .Values.kek.file.existingSecretKey }}
        path: {{ .Values.kek.file.existingSecretKey }}
{{- else }}
{{- with .Values.kek.pkcs11.volumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "cap.kekMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if eq .Values.kek.provider "file" }}
- name: kek
  mountPath: {{ .Values.kek.file.mountPath }}
  readOnly: true
{{- else }}
{{- with .Values.kek.pkcs11.volumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level scheduling: call with (dict "root" $ "component" "api" "w" .Values.api) */}}
{{- define "cap.scheduling" -}}
{{- $root := .root -}}
{{- with .w.priorityClassName -}}
priorityClassName: {{ . }}
{{- end }}
{{- with .w.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .w.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .w.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .w.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .w.topologySpreadConstraints | nindent 2 }}
{{- else if $root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
    topologyKey: {{ $root.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "cap.selectorLabels" (dict "root" $root "component" .component) | nindent 8 }}
    matchLabelKeys: [pod-template-hash]
{{- end }}
{{- end -}}

{{- define "cap.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "cap.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{- define "cap.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* Rolls the pods when a Secret the chart makes changes. */}}
{{- define "cap.checksum" -}}
checksum/config: {{ printf "%s|%s|%s|%s" .Values.mongo.uri .Values.kek.file.keyRing .Values.kek.pkcs11.pin (toJson .Values.config) | sha256sum }}
{{- end -}}

{{/*
One Deployment of a role. Call with (dict "root" $ "component" "api" "w" .Values.api
"args" (list "api") "replicas" true "ports" "<yaml>" "probes" "<yaml>"
"initContainers" "<yaml>" "kek" true "env" "<yaml>" "volumes" "<yaml>" "mounts" "<yaml>"
"serviceAccount" "name" "metrics" true)
*/}}
{{- define "cap.deployment" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cap.fullname" $root }}-{{ .component }}
  labels:
    {{- include "cap.labels" (dict "root" $root "component" .component) | nindent 4 }}
spec:
  {{- if .replicas }}
  replicas: {{ .w.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml .w.strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "cap.selectorLabels" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cap.selectorLabels" (dict "root" $root "component" .component) | nindent 8 }}
        app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
        {{- if .metrics }}
        certautopilot.io/metrics: "true"
        {{- end }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "cap.checksum" $root | nindent 8 }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ .w.terminationGracePeriodSeconds }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- include "cap.podSecurityContext" $root | nindent 6 }}
      {{- include "cap.scheduling" (dict "root" $root "component" .component "w" .w) | nindent 6 }}
      {{- with .initContainers }}
      initContainers:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "cap.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: {{ toJson .args }}
          env:
            {{- .env | nindent 12 }}
            {{- with .w.extraEnv }}
            {{- include "cap.extraEnv" . | nindent 12 }}
            {{- end }}
          ports:
            {{- .ports | nindent 12 }}
          {{- .probes | nindent 10 }}
          resources:
            {{- toYaml .w.resources | nindent 12 }}
          {{- include "cap.containerSecurityContext" $root | nindent 10 }}
          volumeMounts:
            {{- .mounts | nindent 12 }}
      volumes:
        {{- .volumes | nindent 8 }}
{{- end -}}

{{/* A PodDisruptionBudget for a component. */}}
{{- define "cap.pdb" -}}
{{- if .w.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "cap.fullname" .root }}-{{ .component }}
  labels:
    {{- include "cap.labels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  maxUnavailable: {{ .w.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "cap.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* Probes of the roles that serve /healthz and /readyz on CAP_HTTP_ADDR. */}}
{{- define "cap.httpProbes" -}}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
    scheme: {{ .scheme | default "HTTP" }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /healthz
    port: http
    scheme: {{ .scheme | default "HTTP" }}
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
startupProbe:
  httpGet:
    path: /healthz
    port: http
    scheme: {{ .scheme | default "HTTP" }}
  periodSeconds: 2
  failureThreshold: 30
{{- end -}}

{{- define "cap.roleVolumes" -}}
{{ include "cap.kekVolumes" . }}
{{- end -}}

//! The worker count a HorizontalPodAutoscaler computes from the queue depth
//! the metrics adapter serves, for an `External` metric with an
//! `AverageValue` target (the chart's default: `state=queued`, one worker's
//! `CAP_WORKER_CONCURRENCY` per worker).
//!
//! It is the HPA's own rule (`replica_calculator.go`,
//! `GetExternalPerPodMetricReplicas`, then the min/max bounds): the values
//! of every item the selector matched are summed; if that total is within
//! the 10 % tolerance of `target × current` the count stays, otherwise it
//! becomes `ceil(total / target)`; then it is held within min and max. A
//! target scaled to zero replicas is left alone, as the HPA does. Not
//! modelled: the rate limits and stabilization windows of `behavior`,
//! which only delay reaching this number.

/// The HPA's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

/// An HPA on the queue depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTarget {
    /// Jobs per worker (`target.averageValue`); at least 1.
    pub average_value: u64,
    pub min_replicas: u32,
    pub max_replicas: u32,
}

/// The replicas the HPA asks for, with `total` jobs matched and `current`
/// workers running.
pub fn desired_replicas(total: u64, target: QueueTarget, current: u32) -> u32 {
    if current == 0 {
        // "scaling is disabled since the replica count of the target is zero"
        return 0;
    }
    let per_worker = target.average_value.max(1) as f64;
    let ratio = total as f64 / (per_worker * current as f64);
    let wanted = if (1.0 - ratio).abs() <= TOLERANCE {
        current as u64
    } else {
        (total as f64 / per_worker).ceil() as u64
    };
    let max = target.max_replicas.max(target.min_replicas);
    wanted.clamp(target.min_replicas as u64, max as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: QueueTarget = QueueTarget {
        average_value: 8,
        min_replicas: 2,
        max_replicas: 10,
    };

    #[test]
    fn one_worker_per_target_average_rounded_up() {
        assert_eq!(desired_replicas(40, TARGET, 2), 5);
        assert_eq!(desired_replicas(41, TARGET, 2), 6);
        assert_eq!(desired_replicas(17, TARGET, 5), 3);
    }

    #[test]
    fn held_within_min_and_max() {
        assert_eq!(
            desired_replicas(0, TARGET, 4),
            2,
            "an empty queue keeps min"
        );
        assert_eq!(desired_replicas(1, TARGET, 2), 2);
        assert_eq!(desired_replicas(10_000, TARGET, 3), 10, "never above max");
        assert_eq!(desired_replicas(10_000, TARGET, 12), 10);
    }

    #[test]
    fn within_the_tolerance_nothing_changes() {
        // 3 workers × 8 = 24 jobs wanted; 26 is within 10 %, 27 is not.
        assert_eq!(desired_replicas(26, TARGET, 3), 3);
        assert_eq!(desired_replicas(22, TARGET, 3), 3);
        assert_eq!(desired_replicas(27, TARGET, 3), 4);
        assert_eq!(desired_replicas(21, TARGET, 3), 3, "ceil(21 / 8) = 3");
        assert_eq!(desired_replicas(20, TARGET, 4), 3);
    }

    #[test]
    fn a_target_scaled_to_zero_is_left_alone() {
        assert_eq!(desired_replicas(100, TARGET, 0), 0);
    }
}

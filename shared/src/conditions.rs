//! The conditions of a TaskRun's status (DESIGN section 5): their types, and every reason
//! they can carry. Part of the API: the controller writes them; the plugin, GitOps health
//! checks and people read them.

/// Unknown while the current version runs, True or False at its end.
pub const SUCCEEDED: &str = "Succeeded";
/// True only when the current version succeeded.
pub const READY: &str = "Ready";
/// Present (True) only while the current version has failed, so that kstatus and Flux read
/// the failure at once.
pub const STALLED: &str = "Stalled";

/// Every reason the conditions of a TaskRun can carry (README lists them).
pub mod reason {
    /// The Job exists and has no pod yet.
    pub const JOB_CREATED: &str = "JobCreated";
    /// The Job's pod exists but is not running yet: being scheduled, pulling its image,
    /// starting (or stuck at one of these: unschedulable, a wrong image).
    pub const POD_PENDING: &str = "PodPending";
    /// The Job has a pod running, or one that ended which the Job has not counted yet, or its
    /// end is decided (SuccessCriteriaMet, FailureTarget) and its pods are still stopping.
    pub const RUNNING: &str = "Running";
    /// A pod failed, or is stopping (deleted, evicted), and the Job starts another once it has
    /// stopped, unless its backoff limit is reached.
    pub const RETRYING: &str = "Retrying";
    /// The Job is being deleted (not by the controller) before its end: nothing replaces its
    /// pods, and once it is gone the version ends as `JOB_LOST`.
    pub const JOB_DELETING: &str = "JobDeleting";
    /// The Job is suspended.
    pub const SUSPENDED: &str = "Suspended";
    /// The Job completed: the version succeeded.
    pub const COMPLETED: &str = "Completed";
    /// The Job failed for a reason other than those it names (`JOB_FAILURE`).
    pub const JOB_FAILED: &str = "JobFailed";
    /// Failure reasons the Job controller sets, passed through as they are.
    pub const JOB_FAILURE: [&str; 5] = [
        "BackoffLimitExceeded",
        "DeadlineExceeded",
        "PodFailurePolicy",
        "MaxFailedIndexesExceeded",
        "FailedIndexes",
    ];
    /// An older live TaskRun of the same identity runs instead (final).
    pub const DUPLICATE: &str = "Duplicate";
    /// The API server's own validation refused the Job: the template does not fit (final).
    pub const INVALID_TEMPLATE: &str = "InvalidTemplate";
    /// A child's name is held by something no TaskRun controls (final).
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// The version's Job was removed before its end was seen (final).
    pub const JOB_LOST: &str = "JobLost";
    /// A child's name is still held by a TaskRun that is going away.
    pub const WAITING_FOR_PREVIOUS_OWNER: &str = "WaitingForPreviousOwner";
    /// The API server refused a child's create for a reason that may pass; retried.
    pub const CREATE_REFUSED: &str = "CreateRefused";
    /// The Job of an older version is stopping: this version's Job is made once that Job is
    /// gone or finished, so that the agents of two versions do not run side by side.
    pub const PREVIOUS_VERSION_STOPPING: &str = "PreviousVersionStopping";
    /// The API server refused deleting the Job of an older version for a reason that may pass;
    /// retried. This version's Job is made once that Job is gone or finished.
    pub const DELETE_REFUSED: &str = "DeleteRefused";

    /// All of them.
    pub fn all() -> impl Iterator<Item = &'static str> {
        [
            JOB_CREATED,
            POD_PENDING,
            RUNNING,
            RETRYING,
            JOB_DELETING,
            SUSPENDED,
            COMPLETED,
            JOB_FAILED,
            DUPLICATE,
            INVALID_TEMPLATE,
            NAME_CONFLICT,
            JOB_LOST,
            WAITING_FOR_PREVIOUS_OWNER,
            CREATE_REFUSED,
            PREVIOUS_VERSION_STOPPING,
            DELETE_REFUSED,
        ]
        .into_iter()
        .chain(JOB_FAILURE)
    }
}

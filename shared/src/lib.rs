//! The TaskRun API (`taskruns.orchestrator.io/v1`) shared by the webhook, the controller and
//! the CLI: the types, the validation rules, the label keys and the names of children.
//! Pure: no network and no async runtime, so all of it is unit-testable.

mod api;
pub mod client;
pub mod conditions;
pub mod crd;
mod identity;
pub mod labels;
pub mod limits;
pub mod names;
pub mod validation;

pub use api::{FileType, MarkdownFile, Phase, TaskRun, TaskRunSpec, TaskRunStatus};
pub use identity::{Existing, Identity, find_duplicate, has_run};
pub use validation::{Violation, validate_create, validate_update};

/// The finalizer the controller puts on every TaskRun so its children go before it does.
pub const FINALIZER: &str = "orchestrator.io/cleanup";

//! Size bounds of the TaskRun API. The CRD schema and the validation functions both read
//! these (the CEL rule's total, a string, is pinned to `MAX_TOTAL_BYTES` by a test), so the
//! API server and the webhook cannot disagree about a limit.

/// `spec.taskId` is at least this.
pub const MIN_TASK_ID: i64 = 1;
/// `spec.contextVersion` is at least this (and the default: the first run).
pub const MIN_CONTEXT_VERSION: i64 = 1;
/// `spec.serviceName` is at most this many characters (it is the prefix of child names).
pub const MAX_SERVICE_NAME_LEN: usize = 40;
/// `spec.agentName` is at most this many characters (a DNS-1123 label).
pub const MAX_AGENT_NAME_LEN: usize = 63;
/// `spec.markdownFiles` holds at least one and at most this many files.
pub const MAX_FILES: usize = 64;
/// `spec.markdownFiles[].filename` is at most this many characters.
pub const MAX_FILENAME_LEN: usize = 128;
/// The ConfigMap that carries the files holds at most 1 MiB of keys plus values; this bound,
/// in UTF-8 bytes over every filename and content, leaves room for nothing else to matter.
pub const MAX_TOTAL_BYTES: usize = 1_000_000;
/// The API server stores a TaskRun as JSON written by Go's encoder, which escapes HTML: each
/// `<`, `>` and `&` takes six bytes there, each newline or quote two. It refuses, with a bare
/// 500, an object it cannot hand to etcd (1.5 MiB by default). So the markdown files, as
/// stored, take at most this many bytes: what `MAX_TOTAL_BYTES` of ordinary markdown takes,
/// with room left for the rest of the object (annotations alone may take 256 KiB).
pub const MAX_STORED_BYTES: usize = 1_200_000;
/// A single file's content is at most this many characters (the total bound above still
/// applies; this one keeps the API server's CEL cost estimate within its budget: 64 files at
/// the bound must stay under 10M estimated cost units per rule).
pub const MAX_CONTENT_LEN: usize = 256 * 1024;

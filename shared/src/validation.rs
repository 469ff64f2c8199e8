//! The rules of DESIGN section 3 as pure functions. The webhook calls these for every
//! admission; the CRD schema (`api.rs`) states the same rules for the API server, so a
//! TaskRun refused by one is refused by the other, with the same field path.

use std::collections::HashSet;
use std::fmt;

use crate::limits::*;
use crate::names::is_dns1123_label;
use crate::{MarkdownFile, TaskRunSpec};

/// One broken rule: where, what kind of problem, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The field path, as the API server writes it (`spec.markdownFiles[2].content`).
    pub field: String,
    pub reason: Reason,
    /// A sentence a person can act on.
    pub message: String,
}

/// The kind of a violation, matching the API server's field error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Required,
    Invalid,
    TooLong,
    TooMany,
    Duplicate,
    Forbidden,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Violation {
    fn new(field: impl Into<String>, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason,
            message: message.into(),
        }
    }
}

/// Every violation of the rules for a new TaskRun, in field order. Empty means valid.
pub fn validate_create(spec: &TaskRunSpec) -> Vec<Violation> {
    validate_spec(spec, None)
}

/// The create rules, for a spec that replaces `before` when there is one.
fn validate_spec(spec: &TaskRunSpec, before: Option<&TaskRunSpec>) -> Vec<Violation> {
    let mut out = Vec::new();
    check_task_id(spec.task_id, &mut out);
    check_service_name(&spec.service_name, &mut out);
    // What an update leaves as it was is not judged again, as the API server's schema
    // ratcheting does not: a rule tightened since the TaskRun was stored must not block an
    // update of something else (a file added with `kubectl taskrun context add`).
    let kept_agent = before.is_some_and(|b| b.agent_name == spec.agent_name);
    if let Some(agent) = spec.agent_name.as_ref().filter(|_| !kept_agent) {
        check_agent_name(agent, &mut out);
    }
    check_context_version(spec.context_version, &mut out);
    check_files(
        &spec.markdown_files,
        before.map(|b| b.markdown_files.as_slice()),
        &mut out,
    );
    out
}

/// Every violation of the rules for changing `old` into `new`: the create rules on `new`,
/// plus immutability of taskId and serviceName and a contextVersion that never goes down.
/// An unchanged object is always valid here if it was valid when created.
pub fn validate_update(old: &TaskRunSpec, new: &TaskRunSpec) -> Vec<Violation> {
    let mut out = Vec::new();
    if new.task_id != old.task_id {
        out.push(Violation::new(
            "spec.taskId",
            Reason::Forbidden,
            format!(
                "taskId is immutable (was {}, now {}): to run another task, create a new TaskRun under another metadata.name instead of changing this one",
                old.task_id, new.task_id
            ),
        ));
    }
    if new.service_name != old.service_name {
        out.push(Violation::new(
            "spec.serviceName",
            Reason::Forbidden,
            format!(
                "serviceName is immutable (was {}, now {}): to run a task of another service, create a new TaskRun under another metadata.name instead of changing this one",
                shown(&old.service_name),
                shown(&new.service_name)
            ),
        ));
    }
    if new.context_version < old.context_version {
        out.push(Violation::new(
            "spec.contextVersion",
            Reason::Forbidden,
            format!(
                "contextVersion may not decrease (was {was}, now {now}): set it to {was} or more in your manifest (or, applying server-side, leave it out); raise it to run the task with new context",
                was = old.context_version,
                now = new.context_version
            ),
        ));
    }
    let mut rest = validate_spec(new, Some(old));
    // Immutability already explains a changed field; do not report it twice.
    rest.retain(|v| !out.iter().any(|o| o.field == v.field));
    out.extend(rest);
    out
}

/// True when the content has at least one non-whitespace character (Unicode whitespace, as
/// the CEL rule `trim() != ''` sees it).
pub fn has_content(content: &str) -> bool {
    !content.trim().is_empty()
}

/// True when the filename matches `^[A-Za-z0-9][A-Za-z0-9._-]*\.md$` and is at most 128
/// characters. Such a name has no '/' and cannot start with '.', so it never leaves the
/// directory it is mounted in.
pub fn is_valid_filename(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.len() <= MAX_FILENAME_LEN
        && bytes.len() >= 4
        && name.ends_with(".md")
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The filenames of `files` that `other` has no file of.
pub fn filenames_not_in<'a>(files: &'a [MarkdownFile], other: &[MarkdownFile]) -> Vec<&'a str> {
    files
        .iter()
        .map(|f| f.filename.as_str())
        .filter(|name| !other.iter().any(|o| o.filename == *name))
        .collect()
}

/// UTF-8 bytes the files take in a ConfigMap: every filename plus every content.
pub fn total_bytes(files: &[MarkdownFile]) -> usize {
    files
        .iter()
        .map(|f| f.filename.len() + f.content.len())
        .sum()
}

fn check_task_id(task_id: i64, out: &mut Vec<Violation>) {
    if task_id < MIN_TASK_ID {
        out.push(Violation::new(
            "spec.taskId",
            Reason::Invalid,
            format!("taskId must be at least {MIN_TASK_ID}, got {task_id}"),
        ));
    }
}

fn check_service_name(name: &str, out: &mut Vec<Violation>) {
    if name.is_empty() {
        out.push(Violation::new(
            "spec.serviceName",
            Reason::Required,
            "serviceName is required",
        ));
    } else if name.len() > MAX_SERVICE_NAME_LEN {
        out.push(Violation::new(
            "spec.serviceName",
            Reason::TooLong,
            format!(
                "serviceName must be at most {MAX_SERVICE_NAME_LEN} characters, got {}",
                name.len()
            ),
        ));
    } else if !is_dns1123_label(name) {
        out.push(Violation::new(
            "spec.serviceName",
            Reason::Invalid,
            format!(
                "serviceName {} must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
                shown(name)
            ),
        ));
    }
}

fn check_agent_name(name: &str, out: &mut Vec<Violation>) {
    if name.len() > MAX_AGENT_NAME_LEN || !is_dns1123_label(name) {
        out.push(Violation::new(
            "spec.agentName",
            Reason::Invalid,
            format!(
                "agentName {} must be a DNS-1123 label of at most {MAX_AGENT_NAME_LEN} characters: lowercase letters, digits and '-', starting and ending with a letter or digit; or leave it out",
                shown(name)
            ),
        ));
    }
}

fn check_context_version(version: i64, out: &mut Vec<Violation>) {
    if version < MIN_CONTEXT_VERSION {
        out.push(Violation::new(
            "spec.contextVersion",
            Reason::Invalid,
            format!("contextVersion must be at least {MIN_CONTEXT_VERSION}, got {version}"),
        ));
    }
}

/// `before`: the files of the spec this one replaces, if any.
pub fn check_files(
    files: &[MarkdownFile],
    before: Option<&[MarkdownFile]>,
    out: &mut Vec<Violation>,
) {
    if files.is_empty() {
        out.push(Violation::new(
            "spec.markdownFiles",
            Reason::Required,
            "markdownFiles is empty; give the task at least one markdown file (for example task.md)",
        ));
        return;
    }
    if files.len() > MAX_FILES {
        out.push(Violation::new(
            "spec.markdownFiles",
            Reason::TooMany,
            format!(
                "markdownFiles has more than {MAX_FILES} files, at most {MAX_FILES} are \
                 allowed; merge some of them"
            ),
        ));
    }
    // Files past the limit are not looked at one by one: the TaskRun is refused for their
    // number already, and a review of hundreds of thousands of empty files (which fits the
    // webhook's body limit) would otherwise become as many violations and messages.
    let checked = &files[..files.len().min(MAX_FILES)];
    let mut seen = HashSet::with_capacity(checked.len());
    for (i, file) in checked.iter().enumerate() {
        let at = |field: &str| format!("spec.markdownFiles[{i}].{field}");
        // What the update leaves as it was is not judged again (see `validate_spec`), by the
        // API server's ratcheting: the name when a file of that name was there (the list's
        // key), the length when the content is the same, the whole-file rule (content not
        // blank) when the file is. A kept name still counts for uniqueness.
        let old = before.and_then(|b| b.iter().find(|o| o.filename == file.filename));
        let (name_kept, content_kept) = (
            old.is_some(),
            old.is_some_and(|o| o.content == file.content),
        );
        let file_kept = old.is_some_and(|o| o == file);
        if !name_kept && !is_valid_filename(&file.filename) {
            out.push(Violation::new(
                at("filename"),
                Reason::Invalid,
                format!(
                    "filename {} is not allowed: use letters, digits, '.', '_' and '-', start with a letter or digit, end in .md, at most {MAX_FILENAME_LEN} characters",
                    shown(&file.filename)
                ),
            ));
        } else if !seen.insert(file.filename.as_str()) {
            out.push(Violation::new(
                at("filename"),
                Reason::Duplicate,
                format!(
                    "filename {} appears more than once; each file needs its own name",
                    shown(&file.filename)
                ),
            ));
        }
        // Characters, as the schema's maxLength counts them; never more than the bytes, so
        // only a content of more bytes than that needs counting.
        let too_many_chars = (!content_kept && file.content.len() > MAX_CONTENT_LEN)
            .then(|| file.content.chars().count())
            .filter(|&chars| chars > MAX_CONTENT_LEN);
        if let Some(chars) = too_many_chars {
            out.push(Violation::new(
                at("content"),
                Reason::TooLong,
                format!(
                    "markdown file {} has {chars} characters, at most {MAX_CONTENT_LEN} are allowed per file; split it into several files",
                    shown(&file.filename)
                ),
            ));
        } else if !file_kept && !has_content(&file.content) {
            out.push(Violation::new(
                at("content"),
                Reason::Required,
                format!(
                    "markdown file {} is empty or only whitespace; give it content or remove it",
                    shown(&file.filename)
                ),
            ));
        }
    }
    let total = total_bytes(files);
    if total > MAX_TOTAL_BYTES {
        out.push(Violation::new(
            "spec.markdownFiles",
            Reason::TooLong,
            format!(
                "the markdown files take {total} bytes in total, at most {MAX_TOTAL_BYTES} fit in one ConfigMap; move large material elsewhere and reference it"
            ),
        ));
        return;
    }
    // No escape takes more than six bytes, so only a large total needs counting.
    if total > MAX_STORED_BYTES / 6 {
        let stored = stored_bytes(files);
        // A TaskRun stored before this bound existed may stay as large: it fits, and an
        // update that does not grow it (removing a file, say) must get through.
        if stored > MAX_STORED_BYTES && before.is_none_or(|old| stored > stored_bytes(old)) {
            out.push(Violation::new(
                "spec.markdownFiles",
                Reason::TooLong,
                format!(
                    "the markdown files take {stored} bytes as the API server stores them (JSON, where each <, > and & takes six bytes and each newline or quote two), at most {MAX_STORED_BYTES} fit in one TaskRun; move large material elsewhere and reference it"
                ),
            ));
        }
    }
}

/// The bytes the files' names and contents take as the API server stores them.
fn stored_bytes(files: &[MarkdownFile]) -> usize {
    files
        .iter()
        .map(|f| stored_len(&f.filename) + stored_len(&f.content))
        .sum()
}

/// The bytes `s` takes in the JSON the API server stores a custom resource as (Go's
/// `encoding/json`, which escapes HTML): `<`, `>`, `&`, U+2028, U+2029 and control characters
/// as `\u00XX`, six bytes; quotes, backslashes, `\n`, `\r`, `\t`, `\b` and `\f` as two.
pub fn stored_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => 6,
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if u32::from(c) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// A user-supplied string as it appears in a message: quoted (control characters escaped),
/// and cut short so that a hostile value cannot blow up a message, a log line or a terminal.
pub fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

#[cfg(test)]
mod tests;

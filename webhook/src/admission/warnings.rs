//! Warnings for requests that are allowed but probably not what was meant: kubectl prints
//! them, and Argo CD and Flux show them with the sync.

use std::collections::BTreeMap;

use taskrun::validation::{filenames_not_in, shown};
use taskrun::{MarkdownFile, TaskRunSpec};

use super::reviewed;

/// Warnings for labels the request set and the patch corrects or removes: a manifest that
/// carries them (exported with `kubectl get -o yaml`, say) sends the old value on every apply,
/// and a GitOps tool comparing client-side would show it out of sync for ever. On an update,
/// only a value the request changed from the stored one counts: a stored label that the spec
/// has moved past (contextVersion raised) is the webhook's to correct, without a word.
pub(super) fn overridden_labels(
    ops: &[json_patch::PatchOperation],
    labels: Option<&BTreeMap<String, String>>,
    old: Option<&reviewed::Object>,
) -> Vec<String> {
    use json_patch::PatchOperation::{Remove, Replace};
    let value = |labels: Option<&BTreeMap<String, String>>, key: &str| {
        labels.and_then(|l| l.get(key).cloned())
    };
    ops.iter()
        .filter_map(|op| match op {
            Replace(r) => r.path.last(),
            Remove(r) => r.path.last(),
            _ => None,
        })
        .map(|key| key.decoded().into_owned())
        .filter(|key| old.is_none_or(|o| value(o.labels.as_ref(), key) != value(labels, key)))
        .map(|key| {
            format!(
                "label {key} is set by the webhook from the spec, which undid this value; \
                 leave it out of manifests and label commands"
            )
        })
        .collect()
}

/// How files get dropped by mistake, in both warnings about dropped files.
const CLIENT_SIDE_DROP: &str = "a client-side apply (kubectl apply, Argo CD without ServerSideApply) replaces the whole list with the manifest's, dropping files added with \"kubectl taskrun context add\"";

/// Hints for updates that are allowed but probably not what was meant.
pub(super) fn update_warnings(old: &TaskRunSpec, new: &TaskRunSpec) -> Vec<String> {
    let same_files = sorted(&old.markdown_files) == sorted(&new.markdown_files);
    let mut out = Vec::new();
    if new.context_version > old.context_version && same_files {
        out.push(format!(
            "contextVersion raised to {} without new or changed markdown files: the new run gets the same context",
            new.context_version
        ));
    }
    let removed = filenames_not_in(&old.markdown_files, &new.markdown_files);
    if new.context_version > old.context_version && !removed.is_empty() {
        // The same loss with a raise: a manifest bumped in git, applied client-side, drops
        // what was added since; the new run goes without it.
        out.push(format!(
            "markdownFiles no longer has {} that contextVersion {} had: the run at contextVersion {} goes without them; {CLIENT_SIDE_DROP}; if that happened and they are still wanted, add them to the manifest, and apply it server-side from then on",
            listed(&removed),
            old.context_version,
            new.context_version
        ));
    } else if new.context_version == old.context_version && !removed.is_empty() {
        // Most often not meant: a client-side apply sends the manifest's whole list.
        out.push(format!(
            "markdownFiles no longer has {} at contextVersion {}: {CLIENT_SIDE_DROP}; if that happened, add them again with that command (it raises contextVersion, so the task runs again with them) and apply the manifest server-side from then on",
            listed(&removed),
            new.context_version
        ));
    } else if new.context_version == old.context_version && !same_files {
        out.push(format!(
            "markdownFiles changed but contextVersion is still {}: raise it to run the task with the new files",
            new.context_version
        ));
    }
    out
}

/// File names in a message: quoted, the first few.
fn listed(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut out: Vec<String> = names.iter().take(SHOWN).map(|n| shown(n)).collect();
    if names.len() > SHOWN {
        out.push(format!("{} more", names.len() - SHOWN));
    }
    out.join(", ")
}

fn sorted(files: &[MarkdownFile]) -> Vec<&MarkdownFile> {
    let mut v: Vec<&MarkdownFile> = files.iter().collect();
    v.sort_by(|a, b| a.filename.cmp(&b.filename));
    v
}

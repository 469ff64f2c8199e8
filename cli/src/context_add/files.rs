//! The files given with `-f`: read from disk and checked with the shared rules before anything
//! is sent, so a file the API would reject is reported with every other problem at once.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use taskrun::limits::{MAX_FILES, MAX_TOTAL_BYTES};
use taskrun::validation::{has_content, is_valid_filename, total_bytes};
use taskrun::{FileType, MarkdownFile};

use crate::error::Error;

/// Reads every file (its base name becomes the filename) and checks them all; the error
/// lists every problem found.
pub fn load(paths: &[impl AsRef<Path>], file_type: FileType) -> Result<Vec<MarkdownFile>, Error> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let Some(filename) = path.file_name().and_then(|n| n.to_str()) else {
            problems.push(format!("{}: not a file name", path.display()));
            continue;
        };
        match read_at_most(path, MAX_TOTAL_BYTES) {
            Err(e) => problems.push(format!("{}: cannot read: {e}", path.display())),
            Ok(None) => problems.push(format!(
                "{}: more than {MAX_TOTAL_BYTES} bytes, which a TaskRun's files may take in total",
                path.display()
            )),
            Ok(Some(bytes)) => match String::from_utf8(bytes) {
                Err(_) => problems.push(format!("{}: not UTF-8 text", path.display())),
                Ok(content) => files.push(MarkdownFile {
                    filename: filename.to_owned(),
                    content,
                    file_type: Some(file_type),
                }),
            },
        }
    }
    problems.extend(check(&files));
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(Error::Invalid(problems))
    }
}

/// The file's bytes, or `None` when it holds more than `max`. Reads at most one byte past
/// `max`, whatever the file claims to be: a pipe, `/dev/zero` or a file still growing.
fn read_at_most(path: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() <= max).then_some(bytes))
}

/// The shared rules applied to the files on their own (the TaskRun's existing files are
/// checked later, against what the server has).
pub fn check(files: &[MarkdownFile]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for file in files {
        let name = &file.filename;
        if !is_valid_filename(name) {
            problems.push(format!(
                "{name:?}: not a valid markdown filename: use letters, digits, '.', '_' and '-', start with a letter or digit, end in .md, at most 128 characters"
            ));
        }
        if !has_content(&file.content) {
            problems.push(format!(
                "{name:?}: empty or only whitespace; give it content or leave it out"
            ));
        }
        if !seen.insert(name.as_str()) {
            problems.push(format!("{name:?}: given more than once"));
        }
    }
    if files.len() > MAX_FILES {
        problems.push(format!(
            "{} files given; a TaskRun holds at most {MAX_FILES}",
            files.len()
        ));
    }
    let total = total_bytes(files);
    if total > MAX_TOTAL_BYTES {
        problems.push(format!(
            "the files take {total} bytes; a TaskRun's files may take at most {MAX_TOTAL_BYTES} in total"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &str) -> MarkdownFile {
        MarkdownFile {
            filename: name.into(),
            content: content.into(),
            file_type: Some(FileType::Context),
        }
    }

    #[test]
    fn good_files_pass() {
        assert!(check(&[file("a.md", "x"), file("b.md", "y")]).is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = check(&[
            file("notes.txt", "x"),
            file("empty.md", " \n\t"),
            file("a.md", "x"),
            file("a.md", "y"),
        ]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("notes.txt") && problems[0].contains(".md"));
        assert!(problems[1].contains("empty.md") && problems[1].contains("empty"));
        assert!(problems[2].contains("more than once"));
    }

    #[test]
    fn oversize_is_refused() {
        let big = "x".repeat(MAX_TOTAL_BYTES);
        let problems = check(&[file("big.md", &big)]);
        assert!(problems.iter().any(|p| p.contains("bytes")), "{problems:?}");
    }

    #[test]
    fn load_reads_base_names_and_reports_unreadable_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("ctx.md");
        std::fs::write(&good, "# more context\n").expect("write");
        let empty = dir.path().join("empty.md");
        std::fs::write(&empty, "\n").expect("write");
        let missing = dir.path().join("missing.md");

        let files = load(&[&good], FileType::Prompt).expect("loads");
        assert_eq!(
            files,
            vec![MarkdownFile {
                filename: "ctx.md".into(),
                content: "# more context\n".into(),
                file_type: Some(FileType::Prompt),
            }]
        );

        let Err(Error::Invalid(problems)) = load(&[&good, &empty, &missing], FileType::Context)
        else {
            panic!("expected invalid input")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("missing.md") && p.contains("cannot read"))
        );
        assert!(problems.iter().any(|p| p.contains("empty.md")));
    }

    #[test]
    fn a_file_too_large_to_fit_is_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.md");
        std::fs::write(&big, vec![b'x'; MAX_TOTAL_BYTES + 1]).expect("write");
        let Err(Error::Invalid(problems)) = load(&[&big], FileType::Context) else {
            panic!("expected invalid input")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("big.md") && problems[0].contains("more than"));
    }

    #[test]
    fn an_endless_file_is_read_no_further_than_the_limit() {
        // A character device reports length 0; before the bounded read this never returned.
        let Err(Error::Invalid(problems)) = load(&["/dev/zero"], FileType::Context) else {
            panic!("expected invalid input")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("/dev/zero") && problems[0].contains("more than"),
            "{problems:?}"
        );
    }
}

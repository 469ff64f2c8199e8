//! The files given with `-f`: read from disk and checked with the shared rules (the very
//! function the webhook runs on a TaskRun's files) before anything is sent, so a file the API
//! would reject is reported with every other problem at once.

use std::io::{ErrorKind, Read};
use std::path::Path;

use taskrun::limits::MAX_TOTAL_BYTES;
use taskrun::validation::check_files;
use taskrun::{FileType, MarkdownFile};

use crate::error::Error;

/// Reads every file (its base name becomes the filename) and checks them all; the error
/// lists every problem found.
pub fn load(paths: &[impl AsRef<Path>], file_type: FileType) -> Result<Vec<MarkdownFile>, Error> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        let path = path.as_ref();
        match read(path, file_type.clone()) {
            Ok(file) => files.push(file),
            Err(why) => problems.push(format!("{}: {why}", path.display())),
        }
    }
    // The files on their own (the TaskRun's own files are checked with them later, against
    // what the server has). With none read, there is nothing more to say about them.
    if !files.is_empty() {
        let mut violations = Vec::new();
        check_files(&files, None, &mut violations);
        // The messages name the file; the field path would give its place among the -f files.
        problems.extend(violations.into_iter().map(|v| v.message));
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(Error::Invalid(problems))
    }
}

/// One file, or why it cannot be had (a sentence that follows the path).
fn read(path: &Path, file_type: FileType) -> Result<MarkdownFile, String> {
    if path.as_os_str() == "-" {
        return Err(
            "reading from stdin is not supported: give the path of a markdown file (its name becomes the filename)"
                .into(),
        );
    }
    let filename = match path.file_name() {
        None => {
            return Err(
                "names no file: give the path of a markdown file (its name becomes the filename)"
                    .into(),
            );
        }
        Some(name) => name.to_str().ok_or(
            "the file name is not UTF-8: rename the file (a filename may have letters, digits, '.', '_' and '-', and ends in .md)",
        )?,
    };
    let bytes = match read_at_most(path, MAX_TOTAL_BYTES) {
        Ok(Contents::Bytes(bytes)) => bytes,
        Ok(Contents::TooLarge) => {
            return Err(format!(
                "more than {MAX_TOTAL_BYTES} bytes, which a TaskRun's files may take in total"
            ));
        }
        Ok(Contents::Directory) => {
            return Err(
                "is a directory: give each markdown file with its own -f (for example -f DIR/*.md)"
                    .into(),
            );
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Err("no such file".into()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err("cannot read: permission denied".into());
        }
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    let content = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    Ok(MarkdownFile {
        filename: filename.to_owned(),
        content,
        file_type: Some(file_type),
    })
}

/// What reading a path gave.
enum Contents {
    Bytes(Vec<u8>),
    /// More than the bound.
    TooLarge,
    Directory,
}

/// The file's bytes, read no further than one byte past `max`, whatever the file claims to
/// be: a pipe, `/dev/zero` or a file still growing.
fn read_at_most(path: &Path, max: usize) -> std::io::Result<Contents> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Ok(Contents::Directory);
    }
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(if bytes.len() <= max {
        Contents::Bytes(bytes)
    } else {
        Contents::TooLarge
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrun::limits::{MAX_CONTENT_LEN, MAX_FILES};

    fn refused(paths: &[&Path]) -> Vec<String> {
        match load(paths, FileType::Context) {
            Err(Error::Invalid(problems)) => problems,
            other => panic!("expected invalid input, got {other:?}"),
        }
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

        let problems = refused(&[&good, &empty, &missing]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("missing.md") && p.ends_with(": no such file")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("\"empty.md\"")));
    }

    #[test]
    fn the_shared_rules_are_applied_and_every_problem_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |sub: &str, name: &str, content: &str| {
            let path = dir.path().join(sub).join(name);
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
            std::fs::write(&path, content).expect("write");
            path
        };
        let txt = write("1", "notes.txt", "x");
        let blank = write("1", "blank.md", " \n\t");
        let a = write("1", "a.md", "x");
        let a_again = write("2", "a.md", "y");
        let problems = refused(&[&txt, &blank, &a, &a_again]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("\"notes.txt\"") && problems[0].contains(".md"));
        assert!(problems[1].contains("\"blank.md\"") && problems[1].contains("empty"));
        assert!(problems[2].contains("\"a.md\"") && problems[2].contains("more than once"));
    }

    #[test]
    fn the_per_file_and_count_bounds_of_the_api_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Within the total, but more characters than one file may have.
        let long = dir.path().join("long.md");
        std::fs::write(&long, "x".repeat(MAX_CONTENT_LEN + 1)).expect("write");
        let problems = refused(&[&long]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"long.md\"") && problems[0].contains("per file"),
            "{problems:?}"
        );

        let many: Vec<_> = (0..=MAX_FILES)
            .map(|i| {
                let path = dir.path().join(format!("f{i}.md"));
                std::fs::write(&path, "x").expect("write");
                path
            })
            .collect();
        let refs: Vec<&Path> = many.iter().map(|p| p.as_path()).collect();
        let problems = refused(&refs);
        assert!(
            problems.len() == 1 && problems[0].contains(&format!("at most {MAX_FILES}")),
            "{problems:?}"
        );
    }

    #[test]
    fn paths_that_name_no_readable_file_say_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let problems = refused(&[dir.path(), Path::new("-"), &dir.path().join("..")]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].contains("is a directory") && problems[0].contains("its own -f"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("-: reading from stdin is not supported"),
            "{problems:?}"
        );
        assert!(problems[2].contains("names no file"), "{problems:?}");
    }

    #[cfg(unix)]
    #[test]
    fn a_file_name_that_is_not_utf8_is_named_as_such() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/caf\xe9.md"));
        let problems = refused(&[path]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("not UTF-8") && problems[0].contains("rename"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_file_too_large_to_fit_is_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.md");
        std::fs::write(&big, vec![b'x'; MAX_TOTAL_BYTES + 1]).expect("write");
        let problems = refused(&[&big]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("big.md") && problems[0].contains("more than"));
    }

    #[test]
    fn an_endless_file_is_read_no_further_than_the_limit() {
        // A character device reports length 0; before the bounded read this never returned.
        let problems = refused(&[Path::new("/dev/zero")]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("/dev/zero") && problems[0].contains("more than"),
            "{problems:?}"
        );
    }
}

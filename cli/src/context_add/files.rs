//! The files given with `-f`: read from disk and checked with the shared rules (the very
//! function the webhook runs on a TaskRun's files) before anything is sent, so a file the API
//! would reject is reported with every other problem at once.

use std::io::{ErrorKind, Read};
use std::path::Path;

use taskrun::limits::{MAX_FILES, MAX_TOTAL_BYTES};
use taskrun::validation::check_files;
use taskrun::{FileType, MarkdownFile};

use crate::error::Error;

/// Reads every file (its base name becomes the filename) and checks them all; the error
/// lists every problem found. No more is held, all files together, than a TaskRun may hold.
pub fn load(paths: &[impl AsRef<Path>], file_type: FileType) -> Result<Vec<MarkdownFile>, Error> {
    if paths.len() > MAX_FILES {
        return Err(Error::Invalid(vec![format!(
            "{} files given with -f, and a TaskRun has at most {MAX_FILES}: add them in several \
             steps, or merge some",
            paths.len()
        )]));
    }
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut left = MAX_TOTAL_BYTES;
    for path in paths {
        let path = path.as_ref();
        match read(path, file_type.clone(), left) {
            Ok(file) => {
                left -= file.content.len();
                files.push(file);
            }
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

/// One file of at most `left` bytes (what the files before it left of the total), or why it
/// cannot be had (a sentence that follows the path).
fn read(path: &Path, file_type: FileType, left: usize) -> Result<MarkdownFile, String> {
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
    let bytes = match read_at_most(path, left) {
        Ok(Contents::Bytes(bytes)) => bytes,
        Ok(Contents::TooLarge) if left == MAX_TOTAL_BYTES => {
            return Err(format!(
                "more than {MAX_TOTAL_BYTES} bytes, which a TaskRun's files may take in total"
            ));
        }
        Ok(Contents::TooLarge) => {
            return Err(format!(
                "more than the {left} bytes the files before it leave of the \
                 {MAX_TOTAL_BYTES} a TaskRun's files may take in total"
            ));
        }
        Ok(Contents::Directory) => {
            return Err(
                "is a directory: give each markdown file with its own -f (for example -f DIR/*.md)"
                    .into(),
            );
        }
        Ok(Contents::NotAFile) => {
            return Err(
                "is not a regular file (a pipe or a device, say): save the markdown to a file \
                 and give its path"
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
    /// A pipe, a socket or a device: opening or reading one could wait for ever (a FIFO with
    /// no writer, a terminal) or never end (`/dev/zero`).
    NotAFile,
}

/// The file's bytes, read no further than one byte past `max`, even from a file still
/// growing. Only a regular file is read: what is opened is judged, not the path (which could
/// be swapped meanwhile), and opened without waiting for a FIFO's writer.
fn read_at_most(path: &Path, max: usize) -> std::io::Result<Contents> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_dir() {
        return Ok(Contents::Directory);
    }
    if !kind.is_file() {
        return Ok(Contents::NotAFile);
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
    fn files_read_stop_at_the_total_a_taskrun_may_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each within the bounds, the five together past the total: the last is read no
        // further than what the first four leave (plus one byte), and the problem is named
        // for it.
        let size = 240_000;
        let paths: Vec<_> = ["a.md", "b.md", "c.md", "d.md", "e.md"]
            .iter()
            .map(|name| {
                let path = dir.path().join(name);
                std::fs::write(&path, vec![b'x'; size]).expect("write");
                path
            })
            .collect();
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        let problems = refused(&refs);
        let left = MAX_TOTAL_BYTES - 4 * size;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("e.md")
                && problems[0].contains(&format!("the {left} bytes the files before it leave")),
            "{problems:?}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn pipes_and_devices_are_refused_without_waiting_on_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A FIFO with no writer: opening it would wait for one for ever.
        let fifo = dir.path().join("p.md");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // /dev/zero would never end, /dev/stdin waits at a terminal. Asked on a thread of its
        // own, so that a regression fails here instead of hanging the suite.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(refused(&[&fifo, Path::new("/dev/zero")]));
        });
        let problems = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a pipe or device was waited on");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().all(|p| p.contains("is not a regular file")),
            "{problems:?}"
        );
    }
}

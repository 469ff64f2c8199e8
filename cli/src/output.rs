//! What a command prints on stdout. A reader that stops early (`kubectl taskrun migrate-helm -A
//! | head -1`) ends the output, not the command: the exit code stays the one the work earned,
//! where `print!` would panic (exit code 101) on the closed pipe.

use std::io::{self, ErrorKind, Write};

use crate::error::Error;

/// Writes `text` to stdout, locked and flushed.
pub fn print(text: &str) -> Result<(), Error> {
    write_to(&mut io::stdout().lock(), text)
}

/// Writes `text` to `out`; a closed pipe is not an error, as the reader has all it wanted.
pub fn write_to(out: &mut impl Write, text: &str) -> Result<(), Error> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(Error::Output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, then fails every write with `kind`.
    struct Closing {
        room: usize,
        kind: ErrorKind,
    }

    impl Write for Closing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from(self.kind));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_went_away_ends_the_output_quietly() {
        let mut out = Closing {
            room: 10,
            kind: ErrorKind::BrokenPipe,
        };
        assert!(write_to(&mut out, &"row\n".repeat(100)).is_ok());
    }

    #[test]
    fn other_write_failures_are_reported() {
        let mut out = Closing {
            room: 0,
            kind: ErrorKind::StorageFull,
        };
        let e = write_to(&mut out, "row\n").expect_err("disk full");
        assert!(e.to_string().starts_with("cannot write the output"), "{e}");
    }
}

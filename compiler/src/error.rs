//! The compiler's user-facing error: one or more problems, each a single line that names the
//! file and the key or field it is about.

use std::fmt;

/// Every problem a stage found, in the order found. `Display` prints one problem per line.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub problems: Vec<String>,
}

impl Error {
    pub fn new(problem: impl Into<String>) -> Self {
        Error { problems: vec![problem.into()] }
    }

    /// `Ok(())` when nothing was collected, else an error holding every collected problem.
    pub fn check(problems: Vec<String>) -> Result<()> {
        if problems.is_empty() { Ok(()) } else { Err(Error { problems }) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

//! The runner for Prometheus' promqltest `.test` scripts (load / clear / eval / expect).

use std::fmt;
use std::path::{Path, PathBuf};

/// Options of a test run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print each failure's details into the report.
    pub verbose: bool,
}

/// The outcome of one `.test` file.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    pub path: PathBuf,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// One line per failed case: `line N: <query>: <what went wrong>`.
    pub failures: Vec<String>,
}

/// The outcome of several files.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub files: Vec<FileReport>,
}

impl Summary {
    pub fn passed(&self) -> usize {
        self.files.iter().map(|f| f.passed).sum()
    }
    pub fn failed(&self) -> usize {
        self.files.iter().map(|f| f.failed).sum()
    }
    pub fn skipped(&self) -> usize {
        self.files.iter().map(|f| f.skipped).sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.files {
            writeln!(
                f,
                "{:<40} {:>5} passed {:>5} failed {:>5} skipped",
                r.path.display(),
                r.passed,
                r.failed,
                r.skipped
            )?;
            for l in &r.failures {
                writeln!(f, "    {l}")?;
            }
        }
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }
}

/// Runs one `.test` file.
pub fn run_test_file(path: &Path, opts: &RunOptions) -> FileReport {
    let _ = opts;
    FileReport {
        path: path.to_path_buf(),
        ..FileReport::default()
    }
}

/// Runs several files with default options.
pub fn run_test_files(paths: &[PathBuf]) -> Summary {
    let opts = RunOptions::default();
    Summary {
        files: paths.iter().map(|p| run_test_file(p, &opts)).collect(),
    }
}

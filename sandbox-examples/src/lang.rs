//! The languages `coderun` runs: the `--lang` values, where a submission goes inside the sandbox, and the
//! command that runs it.

use clap::ValueEnum;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A POSIX shell script, run with `sh`.
    Sh,
    /// A Python 3 program, run with `python3`.
    Python3,
    /// A compiled program (FILE is its path).
    Exe,
}

impl Lang {
    /// The name used in `--lang` and in the verdict.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Sh => "sh",
            Lang::Python3 => "python3",
            Lang::Exe => "exe",
        }
    }

    /// Where the source or program appears inside the sandbox.
    pub fn file_name(self) -> &'static str {
        match self {
            Lang::Sh => "main.sh",
            Lang::Python3 => "main.py",
            Lang::Exe => "prog",
        }
    }

    /// The program and arguments that run `path` (inside the sandbox).
    pub fn command(self, path: &str) -> (&'static str, Vec<String>) {
        match self {
            Lang::Sh => ("sh", vec![path.into()]),
            Lang::Python3 => ("python3", vec!["-B".into(), path.into()]),
            Lang::Exe => ("", Vec::new()),
        }
    }
}

//! `tidemark check rules` and `tidemark test rules`, with promtool's output and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

/// `tidemark check rules FILE...`: exit 1 when any file has problems.
pub(crate) fn check_rules(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for (path, res) in tidemark_rules::file::check_files(files) {
        println!("Checking {}", path.display());
        match res {
            Ok(n) => println!("  SUCCESS: {n} rules found\n"),
            Err(errs) => {
                ok = false;
                eprintln!("  FAILED:");
                for e in errs {
                    eprintln!("{e}");
                }
                eprintln!();
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `tidemark test rules FILE...`: exit 1 when any test fails.
pub(crate) fn test_rules(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        println!("Unit Testing:  {}", f.display());
        let errs = tidemark_rules::unittest::run_file(f);
        if errs.is_empty() {
            println!("  SUCCESS\n");
        } else {
            ok = false;
            eprintln!("  FAILED:");
            for e in errs {
                eprintln!("{e}");
            }
            eprintln!();
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

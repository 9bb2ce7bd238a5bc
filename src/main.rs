//! The vxbuild command: parse, plan, build, print the pinned reference. Exit codes: 0 success,
//! 1 build failure, 2 usage error.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use vxbuild::cli::{Action, Cli};
use vxbuild::plan::{Environment, plan, plan_lock};
use vxbuild::report::Reporter;

/// Progress and warnings on stderr.
struct Stderr {
    quiet: bool,
    verbose: bool,
    started: std::time::Instant,
}

impl Stderr {
    /// With -v, every line carries the time since start (to see where a build spends it).
    fn stamp(&self) -> String {
        if self.verbose {
            format!(
                "[{:>7.1} ms] ",
                self.started.elapsed().as_secs_f64() * 1000.0
            )
        } else {
            String::new()
        }
    }
}

impl Reporter for Stderr {
    fn info(&self, message: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{}{message}", self.stamp());
        }
    }
    fn warn(&self, message: &str) {
        let _ = writeln!(std::io::stderr(), "warning: {message}");
    }
    fn wants_debug(&self) -> bool {
        self.verbose
    }
    fn debug(&self, message: &str) {
        if self.verbose {
            let _ = writeln!(std::io::stderr(), "{}debug: {message}", self.stamp());
        }
    }
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let (args, upgrade) = match cli.into_action() {
        Action::Build(a) => (a, None),
        Action::Lock(l) => (l.build, Some(l.upgrade)),
    };
    let (quiet, verbose) = (args.quiet, args.verbose);
    let env = match Environment::from_process() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot read the current folder: {e}");
            return ExitCode::from(2);
        }
    };
    let planned = match upgrade {
        None => plan(args, &env),
        Some(_) => plan_lock(args, &env),
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let reporter: std::sync::Arc<dyn Reporter> = std::sync::Arc::new(Stderr {
        quiet,
        verbose,
        started,
    });
    let result = match upgrade {
        None => runtime.block_on(interruptible(async {
            vxbuild::build(&plan, reporter).await.map(|o| o.reference)
        })),
        Some(upgrade) => runtime.block_on(interruptible(async {
            vxbuild::lock(&plan, upgrade, reporter)
                .await
                .map(|p| p.display().to_string())
        })),
    };
    let Some(result) = result else {
        // The build was dropped: its scratch folders (some in /dev/shm) are removed, its
        // sandboxed programs killed, nothing was tagged.
        eprintln!("error: interrupted");
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        vxbuild::scratch::remove_made();
        return ExitCode::from(130);
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::new(e));
            ExitCode::from(1)
        }
    }
}

/// Run `work` until it ends or the process gets SIGINT or SIGTERM (then `None`, `work` dropped).
async fn interruptible<T>(work: impl std::future::Future<Output = T>) -> Option<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return Some(work.await);
    };
    tokio::select! {
        r = work => Some(r),
        _ = int.recv() => None,
        _ = term.recv() => None,
    }
}

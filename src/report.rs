//! How the core tells the user what it is doing, without printing itself.

/// Receives progress and warnings from the build. The CLI prints them to stderr; tests collect them.
pub trait Reporter: Send + Sync {
    /// A step has started or finished ("Resolving dependencies", "Pushed layer …").
    fn info(&self, message: &str);
    /// Something the user should know about but that does not stop the build.
    fn warn(&self, message: &str);
    /// Whether [`Reporter::debug`] messages are wanted (`-v`): they cost a string per request.
    fn wants_debug(&self) -> bool {
        false
    }
    /// Each registry request and where credentials came from; never a secret.
    fn debug(&self, _message: &str) {}
}

/// A reporter that drops everything.
pub struct Silent;

impl Reporter for Silent {
    fn info(&self, _: &str) {}
    fn warn(&self, _: &str) {}
}

/// A reporter that keeps every message, for tests.
#[derive(Default)]
pub struct Collect(pub std::sync::Mutex<Vec<String>>);

impl Reporter for Collect {
    fn info(&self, m: &str) {
        self.0.lock().unwrap().push(format!("info: {m}"));
    }
    fn warn(&self, m: &str) {
        self.0.lock().unwrap().push(format!("warning: {m}"));
    }
}

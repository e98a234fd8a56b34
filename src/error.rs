//! The library's one error type. Every fallible public function returns [`Result`]; the Python
//! bindings map each variant to one exception class in `src/python/errors.rs`.

use std::path::PathBuf;

/// Everything that can go wrong in jarvis-performance, by cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file does not exist.
    #[error("model file not found: {}", .0.display())]
    FileNotFound(PathBuf),

    /// Reading or writing a file failed for another reason (permissions, disk, …).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a valid ONNX model, or tract cannot analyse its graph.
    #[error("cannot load model {path}: {reason}")]
    ModelLoad { path: String, reason: String },

    /// The graph uses an operator tract does not implement.
    #[error("unsupported operator {op_type} at node {node:?}{}", hint(.reason))]
    UnsupportedOp { node: String, op_type: String, reason: String },

    /// A caller-supplied input is wrong: unknown name, missing, wrong dtype, rank or shape.
    #[error("input {name:?}: {reason}")]
    Input { name: String, reason: String },

    /// A requested output name does not exist.
    #[error("output {name:?}: {reason}")]
    Output { name: String, reason: String },

    /// An option passed to the runtime is invalid (thread count, batch size, …).
    #[error("invalid option {option}: {reason}")]
    Config { option: String, reason: String },

    /// Calibration data is missing, malformed, or the calibration run failed.
    #[error("calibration: {0}")]
    Calibration(String),

    /// Rewriting the float graph with int8 ops failed (finding the layers, substituting them,
    /// linking them): a limit or bug of the rewrite, not a fault of the calibration data.
    #[error("int8 rewrite: {0}")]
    Rewrite(String),

    /// A weight update (or rollback, or learning step) was refused; the model is unchanged.
    #[error("update refused: {0}")]
    Update(String),

    /// The model could not be written.
    #[error("cannot save: {0}")]
    Save(String),

    /// An image could not be read, decoded or converted; `index` is its position in the batch,
    /// `origin` names it (the path, or what kind of object it was).
    #[error("image {index} ({origin}): {reason}")]
    Image { index: usize, origin: String, reason: String },

    /// tract failed while running the plan on inputs that passed validation.
    #[error("inference failed: {0}")]
    Inference(String),

    /// A bug: a panic caught at the library boundary. Please report it.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

fn hint(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

impl Error {
    pub(crate) fn input(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Input { name: name.into(), reason: reason.into() }
    }

    pub fn config(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config { option: option.into(), reason: reason.into() }
    }
}

/// Formats a tract (anyhow) error with its whole context chain on one line.
pub(crate) fn chain(err: &tract_onnx::prelude::TractError) -> String {
    format!("{err:#}")
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Like [`catch_panics`] for work on a model being loaded: tract panics on some malformed graphs
/// (found by fuzzing: a Conv whose kernel rank differs from its input's), so a panic there is
/// reported as the file's fault, `ModelLoad`, naming the file.
pub(crate) fn catch_load_panics<T>(path: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_panics("analysing the model", f).map_err(|e| match e {
        Error::Internal(reason) => Error::ModelLoad {
            path: path.to_string(),
            reason: format!("{reason} (the graph is probably malformed)"),
        },
        other => other,
    })
}

/// Runs `f`, turning a panic inside it (a bug in tract or here) into [`Error::Internal`] so that
/// no caller, and no Python process, is ever taken down by one. With [`install_panic_hook`]
/// installed, the panic prints nothing: its location goes to a `log` record instead.
pub(crate) fn catch_panics<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    GUARDS.with(|depth| depth.set(depth.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDS.with(|depth| depth.set(depth.get() - 1));
    match result {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(&*payload);
            if let Some(seen) = CAUGHT.with(|caught| caught.take()) {
                log::debug!(target: PANIC_TARGET, "{what} panicked{}", seen.describe(" (raised as an error)"));
            }
            Err(Error::Internal(format!("{what} panicked: {message}")))
        }
    }
}

/// The text a panic was raised with (`panic!("...")` payloads are `&str` or `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// The `log` target of panic records (Python logger `jarvis_performance.panic`).
const PANIC_TARGET: &str = "jarvis_performance::panic";

thread_local! {
    /// How many [`catch_panics`] guards this thread is inside.
    static GUARDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The last panic the hook saw under a guard, for the guard to log once it has caught it.
    static CAUGHT: std::cell::RefCell<Option<Seen>> = const { std::cell::RefCell::new(None) };
}

/// What the panic hook records of a panic: where, what, and a backtrace when `RUST_BACKTRACE`
/// asks for one (resolved to symbols only if the record is written).
struct Seen {
    location: String,
    message: String,
    backtrace: std::backtrace::Backtrace,
}

impl Seen {
    fn new(info: &std::panic::PanicHookInfo<'_>) -> Self {
        let message = panic_message(info.payload());
        let location = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()));
        Seen { location, message, backtrace: std::backtrace::Backtrace::capture() }
    }

    /// `" at FILE:LINE:COLUMN: MESSAGE{note}"`, then the backtrace on the next lines if captured.
    fn describe(&self, note: &str) -> String {
        let Seen { location, message, backtrace } = self;
        match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => {
                format!("{location}: {message}{note}\n{backtrace}")
            }
            _ => format!("{location}: {message}{note}"),
        }
    }
}

/// Replaces the default panic hook, which prints every panic to stderr even when a guard turns
/// it into an error, by one that prints nothing:
///
/// - a panic under [`catch_panics`] becomes a `debug` record on `jarvis_performance::panic`
///   (location, message, and a backtrace when `RUST_BACKTRACE` asks for one); the message
///   itself travels in the returned [`Error::Internal`];
/// - a panic on a thread with no guard (a rayon or tract worker, whose panic the caller's guard
///   catches when the pool re-raises it; an image decoder, whose panic becomes an `Image` error)
///   becomes an `error` record on the same target, so it is never lost.
///
/// Installed once by the Python module, whose `log` records reach Python's `logging`; further
/// calls do nothing. (The standalone CLI keeps Rust's default hook: it has no logger, and an
/// unguarded panic there must still be seen.) The hook belongs to this library's copy of the
/// Rust standard library, so other Rust extensions in the same Python process keep theirs.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let seen = Seen::new(info);
            if GUARDS.with(|depth| depth.get()) > 0 {
                CAUGHT.with(|caught| caught.replace(Some(seen)));
            } else {
                let thread = std::thread::current();
                let name = thread.name().unwrap_or("unnamed");
                log::error!(target: PANIC_TARGET, "thread {name:?} panicked{}", seen.describe(""));
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_becomes_internal_and_leaves_the_guard_state_clean() {
        install_panic_hook();
        let outer = catch_panics("outer", || -> Result<()> {
            let inner = catch_panics("inner", || -> Result<()> { panic!("deliberate {}", 42) });
            assert!(
                matches!(&inner, Err(Error::Internal(m)) if m == "inner panicked: deliberate 42")
            );
            assert_eq!(GUARDS.with(|depth| depth.get()), 1);
            panic!("second")
        });
        assert!(matches!(&outer, Err(Error::Internal(m)) if m == "outer panicked: second"));
        assert_eq!(GUARDS.with(|depth| depth.get()), 0);
        assert!(CAUGHT.with(|caught| caught.borrow().is_none()), "the guard took the record");
        assert!(matches!(catch_panics("fine", || Ok(7)), Ok(7)));
    }
}

//! The Python exception hierarchy and the one place where library errors become exceptions.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError};
use pyo3::PyErr;

use crate::error::Error;

create_exception!(
    jarvis_performance,
    JarvisError,
    PyException,
    "Base class of every error jarvis-performance raises."
);
create_exception!(
    jarvis_performance,
    ModelLoadError,
    JarvisError,
    "The file is not a model the runtime can load."
);
create_exception!(
    jarvis_performance,
    UnsupportedOpError,
    ModelLoadError,
    "The model uses an operator the runtime does not implement."
);
create_exception!(
    jarvis_performance,
    InputError,
    JarvisError,
    "An input or output name, dtype, rank or shape is wrong."
);
create_exception!(
    jarvis_performance,
    ConfigError,
    JarvisError,
    "An option (threads, batch size, …) is invalid."
);
create_exception!(
    jarvis_performance,
    UpdateError,
    JarvisError,
    "A weight update was refused; the model is unchanged."
);
create_exception!(
    jarvis_performance,
    CalibrationError,
    JarvisError,
    "Calibration data is missing or unusable."
);
create_exception!(
    jarvis_performance,
    ImageError,
    JarvisError,
    "An image could not be read or decoded."
);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match err {
            Error::FileNotFound(_) => PyFileNotFoundError::new_err(message),
            Error::Io { .. } => PyOSError::new_err(message),
            Error::ModelLoad { .. } => ModelLoadError::new_err(message),
            Error::UnsupportedOp { .. } => UnsupportedOpError::new_err(message),
            Error::Input { .. } | Error::Output { .. } => InputError::new_err(message),
            Error::Config { .. } => ConfigError::new_err(message),
            Error::Calibration(_) => CalibrationError::new_err(message),
            Error::Update(_) => UpdateError::new_err(message),
            Error::Image { .. } => ImageError::new_err(message),
            Error::Save(_) | Error::Rewrite(_) | Error::Inference(_) | Error::Internal(_) => {
                JarvisError::new_err(message)
            }
        }
    }
}

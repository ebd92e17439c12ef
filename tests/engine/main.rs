//! The sync engine's tests, through the library's public API only: behaviour, convergence under
//! random schedules, divergence repair, hostile changes objects, texts (with the recorded editing
//! traces), the field cases, scale, and the JSON view of a changes object.
//!
//! One test binary for all of them: each binary links the whole crate and its dependencies, and
//! about thirty of them made most of CI's build time.

mod bad_input;
mod behaviour;
mod changes_show;
mod convergence;
mod divergence;
mod field_cases;
mod scale;
mod text;

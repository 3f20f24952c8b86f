//! Model-server metrics: the exposition scanner, metric specs, engine mappings and normalization
//! into engine-neutral [`crate::model::EndpointMetrics`].
//!
//! Pure code: no I/O, no runtime. Input is a page of text and an [`EngineMapping`]; output is
//! metrics plus one error message per metric that could not be read. Engine selection for an
//! endpoint is the [`EngineRegistry`]'s job. See docs/metrics.md for the mappings and the rules.

pub mod engine;
pub mod exposition;
pub mod normalize;
pub mod spec;

pub use engine::{
    DEFAULT_ENGINE, DEFAULT_ENGINE_LABEL_KEY, EngineConfig, EngineError, EngineMapping, EngineRegistry, SpecOverrides,
    builtin_engine_configs,
};
pub use normalize::{Normalized, normalize};
pub use spec::{MetricSpec, Selector, SpecError};

//! Exact f64 mathematics of the evidence lower bound (work in progress).

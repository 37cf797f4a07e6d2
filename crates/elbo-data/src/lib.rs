//! Data sets for elbo (work in progress).

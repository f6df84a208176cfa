//! The edge agent: plan(desired, observed), an executor that supervises module processes.

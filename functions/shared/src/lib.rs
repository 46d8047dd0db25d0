//! mailhaul on AWS.

//! Environment lookups, one rule for every variable the loader reads: a variable set to an
//! empty or blank value counts as unset, as in the AWS CLI and `gcloud` (a pod spec that maps
//! a missing Secret key often yields `""`).

/// The value of `name`, if it is set to something other than blanks.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The first of `names` that is set (see [`var`]).
pub fn first(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| var(n))
}

//! What every component's configuration section shares: the error that names the key at fault,
//! and the range checks each section's validation is written with.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

use thiserror::Error;

/// A configuration that cannot be used; names the key (or variable) at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var} (config key `{key}`): {message}")]
    Env { var: String, key: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("config key `plugins.chain[{index}].{key}` (plugin `{name}`): {message}")]
    Plugin { index: usize, name: String, key: &'static str, message: String },
}

/// The error of `key` (a `section.key` name) with `message`.
pub fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// `value` of `key` when it lies in `range`, converted to the range's type.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key` and the range.
pub fn in_range<T>(key: &'static str, value: i64, range: RangeInclusive<T>) -> Result<T, ConfigError>
where
    T: TryFrom<i64> + PartialOrd + Display,
{
    T::try_from(value)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| invalid(key, format!("must be between {} and {}", range.start(), range.end())))
}

/// A duration of `key` given in milliseconds, when it lies in `range` (milliseconds).
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key` and the range.
pub fn millis(key: &'static str, value: i64, range: RangeInclusive<u64>) -> Result<Duration, ConfigError> {
    u64::try_from(value)
        .ok()
        .filter(|v| range.contains(v))
        .map(Duration::from_millis)
        .ok_or_else(|| invalid(key, format!("must be between {} and {} milliseconds", range.start(), range.end())))
}

/// An optional per-item duration in milliseconds: `default` when absent.
///
/// # Errors
/// As [`millis`].
pub fn millis_or(
    key: &'static str,
    value: Option<i64>,
    range: RangeInclusive<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |ms| millis(key, ms, range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_name_the_key() {
        assert_eq!(in_range::<u16>("broker.prefetch", 65_535, 1..=65_535).unwrap(), 65_535);
        let err = in_range::<u16>("broker.prefetch", 65_536, 1..=65_535).unwrap_err().to_string();
        assert_eq!(err, "config key `broker.prefetch`: must be between 1 and 65535");
        assert!(in_range::<usize>("x.y", -1, 0..=3).is_err());
        assert_eq!(millis("a.b_ms", 5, 1..=10).unwrap(), Duration::from_millis(5));
        let err = millis("a.b_ms", 0, 1..=10).unwrap_err().to_string();
        assert_eq!(err, "config key `a.b_ms`: must be between 1 and 10 milliseconds");
        assert_eq!(millis_or("a.b_ms", None, 1..=10, Duration::from_secs(1)).unwrap(), Duration::from_secs(1));
    }
}

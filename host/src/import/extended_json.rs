//! MongoDB Extended JSON (what `mongoexport` writes: relaxed, canonical or the legacy v1 form)
//! turned into the plain JSON chat21's code saw: numbers as numbers, dates as epoch milliseconds.

use serde_json::{Map, Number, Value};
use thiserror::Error;

/// A type wrapper whose content cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{wrapper} holds {found}, which is not {expected}")]
pub struct WrapperError {
    pub wrapper: &'static str,
    pub found: String,
    pub expected: &'static str,
}

/// `value` with every type wrapper replaced by the plain value it stands for, recursively:
/// `$numberLong`, `$numberInt`, `$numberDouble`, `$numberDecimal` → numbers, `$date` → epoch
/// milliseconds, `$oid` → its hex string. Other wrappers (`$binary`, `$timestamp`, …) are
/// left as they are: chat21 writes none of them.
///
/// # Errors
/// A [`WrapperError`] for a wrapper whose content is not what Extended JSON puts there.
pub fn plain(value: Value) -> Result<Value, WrapperError> {
    match value {
        Value::Object(object) => match wrapped(&object)? {
            Some(plain) => Ok(plain),
            None => object
                .into_iter()
                .map(|(key, value)| Ok((key, plain(value)?)))
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
        },
        Value::Array(items) => items.into_iter().map(plain).collect::<Result<_, _>>().map(Value::Array),
        other => Ok(other),
    }
}

/// The plain value of a one-key wrapper object, `None` when `object` is not one.
fn wrapped(object: &Map<String, Value>) -> Result<Option<Value>, WrapperError> {
    let mut entries = object.iter();
    let (Some((key, inner)), None) = (entries.next(), entries.next()) else { return Ok(None) };
    let err =
        |wrapper: &'static str, expected: &'static str| WrapperError { wrapper, found: inner.to_string(), expected };
    Ok(Some(match key.as_str() {
        "$oid" => Value::String(inner.as_str().ok_or_else(|| err("$oid", "a string"))?.to_owned()),
        "$numberLong" | "$numberInt" => {
            let wrapper = if key == "$numberLong" { "$numberLong" } else { "$numberInt" };
            let text = inner.as_str().ok_or_else(|| err(wrapper, "an integer in a string"))?;
            Value::from(text.parse::<i64>().map_err(|_| err(wrapper, "an integer in a string"))?)
        }
        "$numberDouble" | "$numberDecimal" => {
            let wrapper = if key == "$numberDouble" { "$numberDouble" } else { "$numberDecimal" };
            let text = inner.as_str().ok_or_else(|| err(wrapper, "a number in a string"))?;
            let number = text.parse::<f64>().map_err(|_| err(wrapper, "a number in a string"))?;
            // Infinity and NaN have no JSON number: they become null, as JSON.stringify makes them.
            Number::from_f64(number).map_or(Value::Null, |n| integral(n.into()))
        }
        "$date" => Value::from(date(inner).ok_or_else(|| err("$date", "a date"))?),
        _ => return Ok(None),
    }))
}

/// A whole double as an integer (`150.0` → `150`), so statuses and timestamps read as integers.
fn integral(value: Value) -> Value {
    match value.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => Value::from(f as i64),
        _ => value,
    }
}

/// The epoch milliseconds of a `$date`: an ISO 8601 string (relaxed), `{"$numberLong": …}`
/// (canonical) or a number (legacy).
fn date(inner: &Value) -> Option<i64> {
    match inner {
        Value::String(text) => text.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond()),
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::Object(_) => match plain(inner.clone()).ok()? {
            Value::Number(n) => n.as_i64(),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn relaxed_canonical_and_legacy_forms_read_alike() {
        let relaxed = json!({"_id": {"$oid": "5f1d7b2c9d1e8a0012345678"}, "timestamp": 1700000000123_i64,
            "status": 150, "createdOn": {"$date": "2023-11-14T22:13:20.123Z"}});
        let canonical = json!({"_id": {"$oid": "5f1d7b2c9d1e8a0012345678"},
            "timestamp": {"$numberLong": "1700000000123"}, "status": {"$numberInt": "150"},
            "createdOn": {"$date": {"$numberLong": "1700000000123"}}});
        let legacy = json!({"_id": {"$oid": "5f1d7b2c9d1e8a0012345678"}, "timestamp": {"$numberDouble": "1700000000123.0"},
            "status": 150.0, "createdOn": {"$date": 1700000000123_i64}});
        let expected = json!({"_id": "5f1d7b2c9d1e8a0012345678", "timestamp": 1700000000123_i64, "status": 150,
            "createdOn": 1700000000123_i64});
        assert_eq!(plain(relaxed).unwrap(), expected);
        assert_eq!(plain(canonical).unwrap(), expected);
        let legacy = plain(legacy).unwrap();
        assert_eq!((&legacy["timestamp"], &legacy["createdOn"]), (&expected["timestamp"], &expected["createdOn"]));
        // A plain double stays as JSON wrote it (the parser's concern); statuses are read as
        // numbers either way.
        assert_eq!(legacy["status"].as_f64(), Some(150.0));
    }

    #[test]
    fn dates_with_offsets_and_nested_wrappers() {
        let doc = json!({"a": [{"$date": "2023-11-14T23:13:20.123+01:00"}], "m": {"x": {"$numberInt": "1"}},
            "d": {"$numberDecimal": "2.5"}, "inf": {"$numberDouble": "Infinity"}});
        assert_eq!(plain(doc).unwrap(), json!({"a": [1700000000123_i64], "m": {"x": 1}, "d": 2.5, "inf": null}));
    }

    #[test]
    fn other_wrappers_and_dollar_keys_in_larger_objects_stay() {
        let doc = json!({"b": {"$binary": {"base64": "AA==", "subType": "00"}}, "q": {"$oid": "x", "other": 1}});
        assert_eq!(plain(doc.clone()).unwrap(), doc);
    }

    #[test]
    fn unreadable_wrappers_are_refused() {
        let err = |v: Value| plain(v).unwrap_err().wrapper;
        assert_eq!(err(json!({"t": {"$numberLong": "12x"}})), "$numberLong");
        assert_eq!(err(json!({"t": {"$numberLong": 12}})), "$numberLong");
        assert_eq!(err(json!({"t": {"$date": "yesterday"}})), "$date");
        assert_eq!(err(json!({"t": {"$date": true}})), "$date");
        assert_eq!(err(json!({"t": {"$oid": 1}})), "$oid");
        assert_eq!(err(json!({"t": {"$numberDouble": "one"}})), "$numberDouble");
    }
}

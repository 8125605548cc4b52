//! Whole numbers as JSON counts them: `60` and `60.0` are the same number,
//! and JSON Schema's `integer` admits both. serde reads only the first into
//! an integer type; these read either (`#[serde(deserialize_with)]`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

struct Whole<T>(PhantomData<T>);

impl<T: TryFrom<u64>> Visitor<'_> for Whole<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a whole number from 0 to {}", max::<T>())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .ok()
            .and_then(|v| T::try_from(v).ok())
            .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Below 2^53 every whole f64 is exact.
        if v.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&v) {
            if let Ok(n) = T::try_from(v as u64) {
                return Ok(n);
            }
        }
        Err(E::invalid_value(de::Unexpected::Float(v), &self))
    }
}

/// The largest `T`, for the message (found by halving: `T` is only `TryFrom<u64>`).
fn max<T: TryFrom<u64>>() -> u64 {
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if T::try_from(mid).is_ok() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Whole(PhantomData))
}

/// For an optional field (with `#[serde(default)]`): `null` is absent.
pub fn option<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    struct Maybe<T>(PhantomData<T>);
    impl<'de, T: TryFrom<u64>> Visitor<'de> for Maybe<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            deserialize(d).map(Some)
        }
    }
    d.deserialize_option(Maybe(PhantomData))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(deserialize_with = "super::deserialize")]
        port: u16,
        #[serde(default, deserialize_with = "super::option")]
        ttl: Option<u32>,
    }

    fn read(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_floats_read_as_integers_and_the_rest_is_refused_with_the_range() {
        assert_eq!(
            read(r#"{"port": 443.0, "ttl": 60.0}"#).unwrap(),
            Body {
                port: 443,
                ttl: Some(60)
            }
        );
        assert_eq!(
            read(r#"{"port": 443, "ttl": null}"#).unwrap(),
            Body {
                port: 443,
                ttl: None
            }
        );
        assert_eq!(read(r#"{"port": 443}"#).unwrap().ttl, None);
        for bad in [
            r#"{"port": 443.5}"#,
            r#"{"port": -1}"#,
            r#"{"port": 65536}"#,
            r#"{"port": "443"}"#,
        ] {
            let e = read(bad).unwrap_err();
            assert!(e.contains("a whole number"), "{bad}: {e}");
        }
        assert!(read(r#"{"port": 65536}"#)
            .unwrap_err()
            .contains("0 to 65535"));
    }
}

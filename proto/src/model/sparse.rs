//! [`Sparse`]: room for a part of a resource that most resources leave
//! empty.
//!
//! The data plane keeps every resource decoded, and a `Route` is sized for
//! all it may carry: header rules, TLS options… A table of 100,000 routes
//! that use none of them would pay for them 100,000 times. A `Sparse` field
//! is one pointer while it holds the empty value and a box once it holds
//! more; reads see the value (the empty one when unset), writes box it on
//! first use, and it is (de)serialized exactly as the value.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

#[derive(Clone, Default)]
pub struct Sparse<T>(Option<Box<T>>);

/// A type with an empty value to lend to unset [`Sparse`] fields; it must
/// equal `T::default()`.
pub trait Empty: Default + PartialEq + 'static {
    fn empty() -> &'static Self;
}

impl Empty for BTreeMap<String, String> {
    fn empty() -> &'static Self {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        &EMPTY
    }
}

impl<T: Empty> Deref for Sparse<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.0 {
            Some(value) => value,
            None => T::empty(),
        }
    }
}

impl<T: Empty> DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Default::default)
    }
}

impl<T: Empty> From<T> for Sparse<T> {
    fn from(value: T) -> Self {
        Sparse((value != T::default()).then(|| Box::new(value)))
    }
}

impl<T: Empty> PartialEq for Sparse<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Empty + Eq> Eq for Sparse<T> {}

impl<T: Empty + fmt::Debug> fmt::Debug for Sparse<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Empty + Serialize> Serialize for Sparse<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Sparse<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Sparse::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HeaderRules;

    #[test]
    fn empty_is_a_pointer_and_reads_and_writes_see_the_value() {
        assert_eq!(std::mem::size_of::<Sparse<HeaderRules>>(), 8);
        let mut rules: Sparse<HeaderRules> = serde_json::from_str("{}").unwrap();
        assert!(rules.0.is_none() && rules.is_empty());
        assert_eq!(rules, Sparse::default());
        rules.remove.push("x-a".into());
        assert!(rules.0.is_some());
        let json = serde_json::to_string(&rules).unwrap();
        assert_eq!(json, r#"{"remove":["x-a"]}"#);
        let back: Sparse<HeaderRules> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rules);
        // Emptied again, it equals (and encodes as) an unset one.
        rules.remove.clear();
        assert_eq!(rules, Sparse::default());
        assert_eq!(serde_json::to_string(&rules).unwrap(), "{}");
    }
}

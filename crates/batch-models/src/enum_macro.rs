//! The `batch_enum!` macro: string enums of the Batch API with an `Unknown(String)` fallback.

/// Declares a Batch string enum.
///
/// Each variant is written `Variant = "wireValue"`. The generated type:
/// * serializes a known variant as its exact spec spelling, and `Unknown(s)` as `s`;
/// * deserializes case-insensitively (the service treats enum values that way, and some spec
///   examples use other casings), keeping any value it does not know as `Unknown(original)`, so
///   a response from a newer api-version still parses and re-serializes unchanged;
/// * implements `Display`, `FromStr` (infallible), `From<&str>` and `AsRef<str>`.
///
/// `Default`, where the service documents one, is implemented next to the invocation.
macro_rules! batch_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $value:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant,
            )+
            /// A value this version of the models does not know, kept verbatim.
            Unknown(String),
        }

        impl $name {
            /// The spec's spellings of the known values, in spec order.
            pub const VALUES: &'static [&'static str] = &[$($value),+];

            /// The wire spelling of this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $value,)+
                    Self::Unknown(other) => other.as_str(),
                }
            }

            /// Parses a wire value, ignoring ASCII case; unknown values become `Unknown`.
            pub fn from_wire(value: &str) -> Self {
                $(
                    if value.eq_ignore_ascii_case($value) {
                        return Self::$variant;
                    }
                )+
                Self::Unknown(value.to_owned())
            }

            /// Whether this is a value the models do not know.
            pub fn is_unknown(&self) -> bool {
                matches!(self, Self::Unknown(_))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::from_wire(s))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::from_wire(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct WireVisitor;
                impl ::serde::de::Visitor<'_> for WireVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " string"))
                    }
                    fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name::from_wire(v))
                    }
                }
                deserializer.deserialize_str(WireVisitor)
            }
        }
    };
}

pub(crate) use batch_enum;

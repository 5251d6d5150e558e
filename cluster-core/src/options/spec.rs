//! What the options table is made of: [`OptionSpec`], one option as the table describes it,
//! the `Get` trait that turns a stored value into its getter's type, and the `options_table!`
//! macro that expands the table (table.rs) into the `Options` struct, its setters, getters,
//! checks, text parsers and the `OPTIONS` list. Apart from the table so that the table reads as
//! the list of options alone.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::control_path::{ClusterName, ControlPath};
use super::parse::ParseError;
use super::privileges::{Account, CpuAffinity, EnvAllow, Rlimits};
use super::sticky::KeyName;
use super::table::{OPTIONS, Options};
use super::token::StatusToken;
use crate::Error;

/// One option as the table describes it; see [`OPTIONS`].
#[derive(Clone, Copy)]
pub struct OptionSpec {
    pub(super) name: &'static str,
    pub(super) setter: &'static str,
    pub(super) default: &'static str,
    pub(super) accepts: &'static str,
    pub(super) doc: &'static [&'static str],
    pub(super) list: bool,
    pub(super) set: fn(&mut Options, &str) -> Result<(), ParseError>,
    pub(super) text: fn(&Options) -> String,
    pub(super) rust: fn(&str) -> Result<String, ParseError>,
    pub(super) check: fn(&Options) -> Result<(), ParseError>,
}

impl OptionSpec {
    /// The option's name: the key of `#[cluster::main]`, the getter, and what errors name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The builder method of [`Options`] that sets it (`with_grace`).
    #[must_use]
    pub fn setter(&self) -> &'static str {
        self.setter
    }

    /// The default, as text that [`OptionSpec::parse`] reads back (`"5s"`).
    #[must_use]
    pub fn default_text(&self) -> &'static str {
        self.default
    }

    /// The environment variable that sets this option: `CLUSTER_` and the name in capitals
    /// (`CLUSTER_GRACE`), except `config_file`'s, which is `CLUSTER_CONFIG` (see
    /// [`Resolved`](crate::options::Resolved)). `count` also reads `WEB_CONCURRENCY`.
    #[must_use]
    pub fn env_var(&self) -> String {
        if self.name == "config_file" {
            return super::config::CONFIG_VAR.to_owned();
        }
        format!("CLUSTER_{}", self.name.to_ascii_uppercase())
    }

    /// What the text may be (`"a duration: ..."`), for docs and errors.
    #[must_use]
    pub fn accepts(&self) -> &'static str {
        self.accepts
    }

    /// The first paragraph of the option's documentation, on one line.
    #[must_use]
    pub fn doc(&self) -> String {
        self.doc
            .iter()
            .map(|line| line.trim())
            .take_while(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether the value is a list (written `[a, b]` in `#[cluster::main]`, `"a, b"` as text).
    #[must_use]
    pub fn is_list(&self) -> bool {
        self.list
    }

    /// The option as `#[cluster::main]` writes it, with its default: `grace = "5s"`,
    /// `count = 2`, `signals = [SIGINT, SIGTERM]`.
    #[must_use]
    pub fn attribute_example(&self) -> String {
        let value = self.default;
        if self.list {
            format!("{} = [{value}]", self.name)
        } else if value.bytes().all(|b| b.is_ascii_digit()) || value == "true" || value == "false" {
            format!("{} = {value}", self.name)
        } else {
            format!("{} = {value:?}", self.name)
        }
    }

    /// The option as the options file writes it, with its default: `grace = "5s"`,
    /// `count = 2`, `signals = ["SIGINT", "SIGTERM"]`; `None` for `config_file`, which the
    /// file cannot set (see [`Resolved`](crate::options::Resolved)).
    #[must_use]
    pub fn toml_example(&self) -> Option<String> {
        if self.name == "config_file" {
            return None;
        }
        let value = self.default;
        Some(if self.list {
            let items: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| format!("{item:?}"))
                .collect();
            format!("{} = [{}]", self.name, items.join(", "))
        } else if value.bytes().all(|b| b.is_ascii_digit()) || value == "true" || value == "false" {
            format!("{} = {value}", self.name)
        } else {
            format!("{} = {value:?}", self.name)
        })
    }

    /// Sets this option of `options` from text, checked by the option's rule.
    ///
    /// # Errors
    ///
    /// an error of kind [`InvalidOption`](crate::ErrorKind::InvalidOption) naming the option, with what was wrong and what is accepted;
    /// `options` is then unchanged.
    pub fn set(&self, options: &mut Options, text: &str) -> Result<(), Error> {
        (self.set)(options, text).map_err(|e| self.error(&e))
    }

    /// [`OptionSpec::set`] with the bare problem, for errors that say where the text was.
    pub(super) fn set_text(&self, options: &mut Options, text: &str) -> Result<(), ParseError> {
        (self.set)(options, text)
    }

    /// Checks a text without setting anything.
    ///
    /// # Errors
    ///
    /// As [`OptionSpec::set`]; the [`ParseError`] tells which item of a list is at fault.
    pub fn parse(&self, text: &str) -> Result<(), ParseError> {
        (self.rust)(text).map(drop)
    }

    /// The value of this option in `options`, as text that [`OptionSpec::set`] reads back.
    #[must_use]
    pub fn value_text(&self, options: &Options) -> String {
        (self.text)(options)
    }

    /// For `#[cluster::main]`: the checked value as a Rust expression whose paths to this
    /// crate start with `$crate`.
    #[doc(hidden)]
    pub fn rust_expr(&self, text: &str) -> Result<String, ParseError> {
        (self.rust)(text)
    }

    /// The option's rule applied to its value in `options`.
    pub(super) fn check(&self, options: &Options) -> Result<(), Error> {
        (self.check)(options).map_err(|e| self.error(&e))
    }

    /// The error of this option for `problem`, as the master reports it.
    #[must_use]
    pub fn error(&self, problem: &ParseError) -> Error {
        Error::invalid_option(self.name, problem.to_string())
    }

    /// The option of this name, if there is one.
    #[must_use]
    pub fn find(name: &str) -> Option<&'static OptionSpec> {
        OPTIONS.iter().find(|spec| spec.name == name)
    }
}

impl std::fmt::Debug for OptionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptionSpec")
            .field("name", &self.name)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

/// How a getter returns its value: a copy, or a slice of a list.
pub(super) trait Get<'a, Out> {
    fn get(&'a self) -> Out;
}

impl<T: Copy> Get<'_, T> for T {
    fn get(&self) -> T {
        *self
    }
}

impl<'a> Get<'a, &'a [Signal]> for Vec<Signal> {
    fn get(&'a self) -> &'a [Signal] {
        self
    }
}

impl<'a> Get<'a, &'a ClusterName> for ClusterName {
    fn get(&'a self) -> &'a ClusterName {
        self
    }
}

impl<'a> Get<'a, &'a ControlPath> for ControlPath {
    fn get(&'a self) -> &'a ControlPath {
        self
    }
}

impl<'a> Get<'a, Option<&'a Path>> for Option<PathBuf> {
    fn get(&'a self) -> Option<&'a Path> {
        self.as_deref()
    }
}

impl<'a> Get<'a, Option<&'a Account>> for Option<Account> {
    fn get(&'a self) -> Option<&'a Account> {
        self.as_ref()
    }
}

impl<'a> Get<'a, Option<&'a KeyName>> for Option<KeyName> {
    fn get(&'a self) -> Option<&'a KeyName> {
        self.as_ref()
    }
}

/// The value types held by the options, read by reference.
macro_rules! get_by_ref {
    ($($ty:ty),*) => {$(
        impl<'a> Get<'a, &'a $ty> for $ty {
            fn get(&'a self) -> &'a $ty {
                self
            }
        }
    )*};
}

get_by_ref!(Rlimits, CpuAffinity, EnvAllow);

impl<'a> Get<'a, Option<&'a StatusToken>> for Option<StatusToken> {
    fn get(&'a self) -> Option<&'a StatusToken> {
        self.as_ref()
    }
}

/// The table's reader: see the module documentation for an entry's grammar.
macro_rules! options_table {
    // The struct: a field for each option stored under its own name.
    (@struct {$($attr:tt)*} [$($field:tt)*] [$($init:tt)*]) => {
        $($attr)*
        pub struct Options { $($field)* }

        impl Options {
            /// The options stored in fields of their own, at their defaults; `Default` then
            /// sets those stored elsewhere.
            fn fields_at_defaults() -> Self {
                Options { $($init)* }
            }
        }
    };
    (@struct $attr:tt [$($field:tt)*] [$($init:tt)*]
        at $($at:ident).+ => $name:ident: $ty:ty = $default:expr; $($rest:tt)*) => {
        options_table!(@struct $attr [$($field)*] [$($init)*] $($rest)*);
    };
    (@struct $attr:tt [$($field:tt)*] [$($init:tt)*]
        $name:ident: $ty:ty = $default:expr; $($rest:tt)*) => {
        options_table!(@struct $attr [$($field)* pub(super) $name: $ty,] [$($init)* $name: $default,] $($rest)*);
    };
    (@place $o:ident; $name:ident) => { $o.$name };
    (@place $o:ident; $name:ident; $($at:ident).+) => { $o.$($at).+ };
    (@get $ty:ty) => { $ty };
    (@get $ty:ty as $get:ty) => { $get };
    (@check) => { |_| Ok::<(), ParseError>(()) };
    (@check $check:expr) => { |value| ($check)(value).map_err(ParseError::from) };
    (@parse $ty:ty) => { <$ty as OptionValue>::parse_text };
    (@parse $ty:ty, $parse:path) => { $parse };
    (@print $ty:ty) => { <$ty as OptionValue>::to_text };
    (@print $ty:ty, $print:path) => { $print };
    (
        $(#[$struct_attr:meta])*
        pub struct Options { $($extra:ident: $extra_ty:ty = $extra_init:expr,)* }
        $(
            $(#[doc = $doc:literal])+
            $name:ident: $ty:ty $(as $get:ty)? = $default:expr;
            $(at $($at:ident).+;)?
            set $setter:ident($arg:ty);
            text $text:literal, accepts $accepts:literal;
            $(check $check:expr;)?
            $(parse $parse:path, print $print:path;)?
        )+
    ) => {
        options_table!(@struct {$(#[$struct_attr])*}
            [$(pub(super) $extra: $extra_ty,)*] [$($extra: $extra_init,)*]
            $($(at $($at).+ =>)? $name: $ty = $default;)+);

        impl Default for Options {
            fn default() -> Self {
                let mut o = Options::fields_at_defaults();
                $($(
                    let field = &mut o.$($at).+;
                    *field = $default;
                )?)+
                o
            }
        }

        impl Options {
            $(
                $(#[doc = $doc])+
                #[doc = ""]
                #[doc = concat!("Default `", $text, "`. As text ([`Options::set_from_str`], `#[cluster::main]`): ", $accepts, ".")]
                #[must_use]
                #[allow(clippy::useless_conversion)] // `Into` for the types that take more than one
                pub fn $setter(mut self, value: $arg) -> Self {
                    let o = &mut self;
                    let field = &mut options_table!(@place o; $name $(; $($at).+)?);
                    *field = value.into();
                    self
                }

                #[doc = concat!("The `", stringify!($name), "` option: see [`Options::", stringify!($setter), "`].")]
                #[must_use]
                pub fn $name(&self) -> options_table!(@get $ty $(as $get)?) {
                    let o = self;
                    Get::get(&options_table!(@place o; $name $(; $($at).+)?))
                }
            )+
        }

        /// Every option of [`Options`], in the order of the README's table.
        pub static OPTIONS: &[OptionSpec] = &[$(
            OptionSpec {
                name: stringify!($name),
                setter: stringify!($setter),
                default: $text,
                accepts: $accepts,
                doc: &[$($doc),+],
                list: <$ty as OptionValue>::LIST,
                set: |o, text| {
                    let value: $ty = (options_table!(@parse $ty $(, $parse)?))(text)?;
                    (options_table!(@check $($check)?))(&value)?;
                    let field = &mut options_table!(@place o; $name $(; $($at).+)?);
                    *field = value;
                    Ok(())
                },
                text: |o| (options_table!(@print $ty $(, $print)?))(&options_table!(@place o; $name $(; $($at).+)?)),
                rust: |text| {
                    let value: $ty = (options_table!(@parse $ty $(, $parse)?))(text)?;
                    (options_table!(@check $($check)?))(&value)?;
                    Ok(OptionValue::to_rust(&value))
                },
                check: |o| (options_table!(@check $($check)?))(&options_table!(@place o; $name $(; $($at).+)?)),
            },
        )+];
    };
}

pub(super) use options_table;

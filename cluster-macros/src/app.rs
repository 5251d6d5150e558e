//! What `main` declares: its marked functions, their signatures and message types.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{
    Attribute, FnArg, GenericArgument, Item, ItemFn, PathArguments, ReturnType, Signature, Stmt,
    Type,
};

use crate::args::Errors;

/// The three marker attributes, as their last path segment is spelled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    Worker,
    Master,
    BeforeFork,
}

impl Marker {
    fn from_name(name: &str) -> Option<Marker> {
        match name {
            "worker" => Some(Marker::Worker),
            "master" => Some(Marker::Master),
            "before_fork" => Some(Marker::BeforeFork),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Marker::Worker => "worker",
            Marker::Master => "master",
            Marker::BeforeFork => "before_fork",
        }
    }

    /// The context type the function takes, if any.
    fn context(self) -> Option<&'static str> {
        match self {
            Marker::Worker => Some("WorkerContext"),
            Marker::Master => Some("MasterContext"),
            Marker::BeforeFork => None,
        }
    }
}

/// The message types of a context, `(D, U)`; `None` where the context leaves them at `()`.
#[derive(Clone)]
pub(crate) struct Messages {
    pub(crate) down: Option<Type>,
    pub(crate) up: Option<Type>,
    /// The context type as written, for the error on a mismatch.
    pub(crate) ty: Type,
}

impl Messages {
    /// Types compare as written: the macro cannot resolve paths, so `Cmd` and `crate::Cmd`
    /// differ here even when rustc would find them equal.
    fn key(ty: Option<&Type>) -> String {
        match ty {
            Some(ty) => ty.to_token_stream().to_string(),
            None => quote!(()).to_string(),
        }
    }

    fn same_as(&self, other: &Messages) -> bool {
        Self::key(self.down.as_ref()) == Self::key(other.down.as_ref())
            && Self::key(self.up.as_ref()) == Self::key(other.up.as_ref())
    }

    fn describe(&self) -> String {
        pretty(&format!(
            "<{}, {}>",
            Self::key(self.down.as_ref()),
            Self::key(self.up.as_ref())
        ))
    }

    pub(crate) fn down_tokens(&self) -> TokenStream {
        self.down
            .as_ref()
            .map_or_else(|| quote!(()), ToTokens::to_token_stream)
    }

    pub(crate) fn up_tokens(&self) -> TokenStream {
        self.up
            .as_ref()
            .map_or_else(|| quote!(()), ToTokens::to_token_stream)
    }
}

/// A marked function.
pub(crate) struct Hook {
    pub(crate) ident: syn::Ident,
    /// Whether it takes its context (a worker or master may leave it out).
    pub(crate) takes_context: bool,
    pub(crate) messages: Option<Messages>,
}

/// `main` taken apart.
pub(crate) struct App {
    /// The items of main's body with the markers removed, to be emitted as they are.
    pub(crate) items: Vec<Stmt>,
    pub(crate) worker: Option<Hook>,
    pub(crate) master: Option<Hook>,
    pub(crate) before_fork: Option<Hook>,
    /// The first marker found, for the error when markers are mixed with an app written as
    /// types.
    pub(crate) first_marker: Option<Attribute>,
    /// Whether a function is marked as the worker, even one whose signature is wrong: the
    /// error on it says enough, "no worker" would be noise.
    pub(crate) worker_marked: bool,
}

/// Whether `attr` is one of the markers: `#[worker]`, `#[cluster::worker]`, or
/// `#[<crate>::worker]` with the path given as `crate = "..."`.
pub(crate) fn marker_of(attr: &Attribute, krate: Option<&syn::Path>) -> Option<Marker> {
    let path = attr.path();
    let last = path.segments.last()?;
    let marker = Marker::from_name(&last.ident.to_string())?;
    let prefix: Vec<String> = path
        .segments
        .iter()
        .take(path.segments.len() - 1)
        .map(|s| s.ident.to_string())
        .collect();
    let expected: Vec<String> = match krate {
        Some(k) => k.segments.iter().map(|s| s.ident.to_string()).collect(),
        None => vec!["cluster".to_owned()],
    };
    (prefix.is_empty() || prefix == expected).then_some(marker)
}

/// Removes the markers from the items of a body, so that they are not expanded on their own
/// (which reports them as misplaced) when `main` is emitted unchanged after an error.
pub(crate) fn strip_markers(block: &mut syn::Block, krate: Option<&syn::Path>) {
    for stmt in &mut block.stmts {
        if let Stmt::Item(item) = stmt {
            if let Some(attrs) = item_attrs_mut(item) {
                attrs.retain(|a| marker_of(a, krate).is_none());
            }
        }
    }
}

fn item_attrs_mut(item: &mut Item) -> Option<&mut Vec<Attribute>> {
    Some(match item {
        Item::Const(i) => &mut i.attrs,
        Item::Enum(i) => &mut i.attrs,
        Item::Fn(i) => &mut i.attrs,
        Item::Impl(i) => &mut i.attrs,
        Item::Mod(i) => &mut i.attrs,
        Item::Static(i) => &mut i.attrs,
        Item::Struct(i) => &mut i.attrs,
        Item::Trait(i) => &mut i.attrs,
        Item::Type(i) => &mut i.attrs,
        Item::Use(i) => &mut i.attrs,
        _ => return None,
    })
}

/// Checks `main`'s own signature: the generated `main` dispatches on the role before any
/// runtime exists, so nothing about it may be async, take arguments or return a value.
pub(crate) fn check_main_signature(sig: &Signature, errors: &mut Errors) {
    if let Some(token) = &sig.asyncness {
        errors.push(syn::Error::new(
            token.span,
            "remove `async`: `#[cluster::main]` dispatches on the process's role first and then builds the runtime the master or the worker needs",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "`main` cannot be generic",
        ));
    }
    if let Some(arg) = sig.inputs.first() {
        errors.push(syn::Error::new_spanned(arg, "`main` takes no parameters"));
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        errors.push(syn::Error::new_spanned(
            ty,
            "remove the return type: the generated `main` returns the cluster's `std::process::ExitCode`",
        ));
    }
}

/// Collects the items of `main`'s body and checks every marked function.
pub(crate) fn analyze(block: &syn::Block, krate: Option<&syn::Path>, errors: &mut Errors) -> App {
    let mut app = App {
        items: Vec::new(),
        worker: None,
        master: None,
        before_fork: None,
        first_marker: None,
        worker_marked: false,
    };
    for stmt in &block.stmts {
        let Stmt::Item(item) = stmt else {
            errors.push(syn::Error::new_spanned(
                stmt,
                "`#[cluster::main]` allows only items (functions, types, `use`) in `main`: a statement here would run in every worker before its role is known; put master set-up in a `#[cluster::before_fork]` function",
            ));
            continue;
        };
        let mut item = item.clone();
        let markers: Vec<(Marker, Attribute)> = match item_attrs_mut(&mut item) {
            Some(attrs) => {
                let found = attrs
                    .iter()
                    .filter_map(|a| marker_of(a, krate).map(|m| (m, a.clone())))
                    .collect();
                attrs.retain(|a| marker_of(a, krate).is_none());
                found
            }
            None => Vec::new(),
        };
        if let Some((marker, attr)) = markers.first() {
            app.first_marker.get_or_insert_with(|| attr.clone());
            app.worker_marked |= *marker == Marker::Worker;
        }
        if let Some((_, attr)) = markers.get(1) {
            errors.push(syn::Error::new_spanned(
                attr,
                "a function takes one role: remove one of its `#[cluster::...]` markers",
            ));
        }
        if let Some((marker, attr)) = markers.first() {
            match &item {
                Item::Fn(f) => {
                    if let Some(hook) = check_hook(*marker, attr, f, errors) {
                        let slot = match marker {
                            Marker::Worker => &mut app.worker,
                            Marker::Master => &mut app.master,
                            Marker::BeforeFork => &mut app.before_fork,
                        };
                        if slot.is_some() {
                            let what = match marker {
                                Marker::Worker => {
                                    "a second `#[cluster::worker]` function: a cluster has exactly one worker function (give it `ctx.group()`-dependent behaviour, or build groups with `cluster::Cluster::group`)"
                                }
                                Marker::Master => {
                                    "a second `#[cluster::master]` function: a cluster has at most one"
                                }
                                Marker::BeforeFork => {
                                    "a second `#[cluster::before_fork]` function: a cluster has at most one"
                                }
                            };
                            errors.push(syn::Error::new_spanned(attr, what));
                        } else {
                            *slot = Some(hook);
                        }
                    }
                }
                _ => errors.push(syn::Error::new_spanned(
                    attr,
                    format!("`#[cluster::{}]` marks an `async fn`", marker.name()),
                )),
            }
        }
        app.items.push(Stmt::Item(item));
    }
    if let (Some(worker), Some(master)) = (&app.worker, &app.master) {
        if let (Some(w), Some(m)) = (&worker.messages, &master.messages) {
            if !m.same_as(w) {
                errors.push(syn::Error::new_spanned(
                    &m.ty,
                    format!(
                        "mismatched message types: the master's context is `MasterContext{}` but the worker's is `WorkerContext{}`; both take <messages to workers, messages to the master>, written the same way",
                        m.describe(),
                        w.describe()
                    ),
                ));
            }
        }
    }
    app
}

/// Checks a marked function's signature; `None` when it is wrong (the error is recorded).
fn check_hook(marker: Marker, attr: &Attribute, f: &ItemFn, errors: &mut Errors) -> Option<Hook> {
    let name = marker.name();
    let mut ok = true;
    if let syn::Meta::List(list) = &attr.meta {
        errors.push(syn::Error::new_spanned(
            &list.tokens,
            format!("`#[cluster::{name}]` takes no arguments"),
        ));
        ok = false;
    }
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!(
                "the `#[cluster::{name}]` function must be `async`: write `async fn {}`",
                sig.ident
            ),
        ));
        ok = false;
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            format!("the `#[cluster::{name}]` function cannot be generic"),
        ));
        ok = false;
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "variadic functions are not supported",
        ));
        ok = false;
    }
    let mut messages = None;
    let mut takes_context = false;
    match marker.context() {
        None => {
            if let Some(arg) = sig.inputs.first() {
                errors.push(syn::Error::new_spanned(
                    arg,
                    format!("the `#[cluster::{name}]` function takes no parameters: write `async fn {}()`", sig.ident),
                ));
                ok = false;
            }
        }
        Some(context) => {
            if let Some(extra) = sig.inputs.iter().nth(1) {
                errors.push(syn::Error::new_spanned(
                    extra,
                    format!("the `#[cluster::{name}]` function takes one parameter, its `cluster::{context}<D, U>`"),
                ));
                ok = false;
            }
            if let Some(arg) = sig.inputs.first() {
                match check_context(arg, marker, context) {
                    Ok(m) => {
                        messages = Some(m);
                        takes_context = true;
                    }
                    Err(e) => {
                        errors.push(e);
                        ok = false;
                    }
                }
            }
        }
    }
    if let Err(e) = check_return(&sig.output, name) {
        errors.push(e);
        ok = false;
    }
    ok.then(|| Hook {
        ident: sig.ident.clone(),
        takes_context,
        messages,
    })
}

fn check_context(arg: &FnArg, marker: Marker, context: &str) -> syn::Result<Messages> {
    let name = marker.name();
    let wrong = |span_of: &dyn ToTokens, found: &str| {
        syn::Error::new_spanned(
            span_of,
            format!(
                "the `#[cluster::{name}]` function takes its `cluster::{context}<D, U>`{found}"
            ),
        )
    };
    let FnArg::Typed(pat_type) = arg else {
        return Err(wrong(arg, ", not `self`"));
    };
    let ty = &*pat_type.ty;
    let path = match ty {
        Type::Path(p) if p.qself.is_none() => &p.path,
        Type::Reference(r) => {
            return Err(wrong(
                r,
                format!(" by value: `ctx: {context}<D, U>`, not a reference").as_str(),
            ));
        }
        other => {
            return Err(wrong(
                other,
                &format!(", found `{}`", pretty(&other.to_token_stream().to_string())),
            ));
        }
    };
    let Some(last) = path.segments.last() else {
        return Err(wrong(ty, ""));
    };
    if last.ident != context {
        let other = if context == "WorkerContext" {
            "MasterContext"
        } else {
            "WorkerContext"
        };
        let found = if last.ident == other {
            format!(", not a `{other}`")
        } else {
            format!(", found `{}`", pretty(&ty.to_token_stream().to_string()))
        };
        return Err(wrong(ty, &found));
    }
    let (down, up) = match &last.arguments {
        PathArguments::None => (None, None),
        PathArguments::AngleBracketed(args) => {
            let mut types = Vec::new();
            for arg in &args.args {
                match arg {
                    GenericArgument::Type(t) => types.push(t.clone()),
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            format!("`{context}` takes two message types: `{context}<D, U>`"),
                        ));
                    }
                }
            }
            let mut types = types.into_iter();
            let down = types.next();
            let up = types.next();
            if let Some(extra) = types.next() {
                return Err(syn::Error::new_spanned(
                    extra,
                    format!("`{context}` takes two message types: `{context}<D, U>`"),
                ));
            }
            (down, up)
        }
        PathArguments::Parenthesized(p) => {
            return Err(syn::Error::new_spanned(
                p,
                format!("`{context}` takes two message types: `{context}<D, U>`"),
            ));
        }
    };
    Ok(Messages {
        down,
        up,
        ty: ty.clone(),
    })
}

/// Accepts `()` (written or not) and `Result<(), E>` or an alias `Result<()>`: the types
/// `cluster::worker::IntoOutcome` is implemented for.
fn check_return(output: &ReturnType, name: &str) -> syn::Result<()> {
    let ReturnType::Type(_, ty) = output else {
        return Ok(());
    };
    let is_unit = |t: &Type| matches!(t, Type::Tuple(tuple) if tuple.elems.is_empty());
    if is_unit(ty) {
        return Ok(());
    }
    if let Type::Path(p) = &**ty {
        if let Some(last) = p.path.segments.last() {
            if last.ident == "Result" {
                if let PathArguments::AngleBracketed(args) = &last.arguments {
                    if let Some(GenericArgument::Type(first)) = args.args.first() {
                        if is_unit(first) && args.args.len() <= 2 {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    Err(syn::Error::new_spanned(
        ty,
        format!(
            "the `#[cluster::{name}]` function returns `()` or `Result<(), E>` (E: Display), found `{}`",
            pretty(&ty.to_token_stream().to_string())
        ),
    ))
}

/// Undoes the spacing of `TokenStream::to_string` for types quoted in messages:
/// `Result < (), std :: io :: Error >` reads `Result<(), std::io::Error>`.
fn pretty(tokens: &str) -> String {
    let mut s = tokens.to_owned();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" < ", "<"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("& ", "&"),
    ] {
        s = s.replace(from, to);
    }
    s
}

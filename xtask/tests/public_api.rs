//! Breaking changes are visible: the public API of every library crate is listed in
//! `crates/<crate>/public-api.txt`, regenerated here from the sources and compared; the listing's
//! fingerprint must appear in the crate's `CHANGELOG.md`, so the API cannot change without the
//! changelog saying so.
//!
//! The listing is read from the sources with `syn`: every item declared `pub` (not
//! `pub(crate)`) in any module of `src/` outside `#[cfg(test)]`, with its signature (functions),
//! its public fields and derives (structs), its variants (enums), its items' signatures (traits),
//! the `pub use` re-exports, and the methods and trait implementations of the crate's public
//! types. Bodies and documentation are left out, so only a change of what a user can call or
//! name changes it. An item that is `pub` inside a private module is listed too (it may be
//! re-exported): make internals `pub(crate)`.
//!
//! After an intended change: `RECALLSEG_BLESS_API=1 cargo test -p xtask --test public_api`
//! rewrites the listings, then say what changed in the crate's CHANGELOG.md under
//! "Unreleased" together with the new fingerprint (the test prints it).

use quote::ToTokens;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The library crates whose API is pinned (`recallseg-cli`'s library only serves its tests).
const CRATES: &[&str] = &[
    "files",
    "kernels",
    "distributed",
    "metrics",
    "data",
    "losses",
    "models",
    "report",
    "trainer",
    "compare",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Tokens as one line of text, spaces normalised.
fn text(t: &impl ToTokens) -> String {
    let s = t.to_token_stream().to_string();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_public(v: &syn::Visibility) -> bool {
    matches!(v, syn::Visibility::Public(_))
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && text(&a.meta).replace(' ', "").contains("cfg(test)"))
}

/// The attributes that are part of an item's API (derives, `non_exhaustive`, `repr`).
fn api_attrs(attrs: &[syn::Attribute]) -> String {
    attrs
        .iter()
        .filter(|a| {
            ["derive", "non_exhaustive", "repr", "must_use"]
                .iter()
                .any(|n| a.path().is_ident(n))
        })
        .map(|a| text(a) + " ")
        .collect()
}

/// What one crate's sources declare.
struct Listing {
    lines: BTreeSet<String>,
    /// Names of the public types (struct, enum, trait, type alias): their impls are listed.
    public_types: BTreeSet<String>,
    /// Names of the traits declared without `pub`: their impls are not part of the API.
    private_traits: BTreeSet<String>,
}

/// The file of module `name` declared in `file` (`#[path]` honoured).
fn module_file(file: &Path, name: &str, attrs: &[syn::Attribute]) -> PathBuf {
    let dir = file.parent().unwrap();
    let own_dir = match file.file_stem().unwrap().to_str().unwrap() {
        "lib" | "mod" | "main" => dir.to_path_buf(),
        stem => dir.join(stem),
    };
    for a in attrs {
        if a.path().is_ident("path") {
            if let syn::Meta::NameValue(nv) = &a.meta {
                if let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) = &nv.value
                {
                    return dir.join(s.value());
                }
            }
        }
    }
    let flat = own_dir.join(format!("{name}.rs"));
    if flat.is_file() {
        flat
    } else {
        own_dir.join(name).join("mod.rs")
    }
}

/// Collects the public items of `items` (module path `path`, in `file`); with `impls`, the
/// impl blocks of public types (second pass, once every public type is known).
fn collect(items: &[syn::Item], path: &str, file: &Path, out: &mut Listing, impls: bool) {
    for item in items {
        match item {
            syn::Item::Mod(m) if is_cfg_test(&m.attrs) => {}
            syn::Item::Mod(m) => {
                let sub = format!("{path}::{}", m.ident);
                if is_public(&m.vis) && !impls {
                    out.lines.insert(format!("pub mod {sub}"));
                }
                match &m.content {
                    Some((_, inner)) => collect(inner, &sub, file, out, impls),
                    None => {
                        let f = module_file(file, &m.ident.to_string(), &m.attrs);
                        let src = std::fs::read_to_string(&f)
                            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                        let parsed = syn::parse_file(&src)
                            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                        collect(&parsed.items, &sub, &f, out, impls);
                    }
                }
            }
            syn::Item::Impl(i) if impls && !is_cfg_test(&i.attrs) => impl_lines(i, path, out),
            _ if impls => {}
            other => item_line(other, path, out),
        }
    }
}

/// The line of one non-module, non-impl item, if it is public.
fn item_line(item: &syn::Item, path: &str, out: &mut Listing) {
    use syn::Item as I;
    let (vis, attrs, line, type_name) = match item {
        I::Fn(f) => (&f.vis, &f.attrs, text(&f.sig), None),
        I::Struct(s) => {
            let mut s = s.clone();
            let private = s.fields.iter().filter(|f| !is_public(&f.vis)).count();
            let kept: Vec<syn::Field> = s
                .fields
                .iter()
                .filter(|f| is_public(&f.vis))
                .cloned()
                .map(|mut f| {
                    f.attrs.clear();
                    f
                })
                .collect();
            match &mut s.fields {
                syn::Fields::Named(n) => n.named = kept.into_iter().collect(),
                syn::Fields::Unnamed(u) => u.unnamed = kept.into_iter().collect(),
                syn::Fields::Unit => {}
            }
            s.attrs.clear();
            s.vis = syn::Visibility::Inherited;
            // Whether there are private fields is API (the struct cannot be built by a
            // literal); how many is not.
            let note = if private > 0 {
                " /* private fields */".to_string()
            } else {
                String::new()
            };
            let name = s.ident.to_string();
            (
                &item_vis(item),
                item_attrs(item),
                text(&s) + &note,
                Some(name),
            )
        }
        I::Enum(e) => {
            let mut e = e.clone();
            e.attrs.clear();
            e.vis = syn::Visibility::Inherited;
            for v in e.variants.iter_mut() {
                v.attrs.clear();
                for f in v.fields.iter_mut() {
                    f.attrs.clear();
                }
            }
            let name = e.ident.to_string();
            (&item_vis(item), item_attrs(item), text(&e), Some(name))
        }
        I::Trait(t) if !is_public(&t.vis) => {
            out.private_traits.insert(t.ident.to_string());
            return;
        }
        I::Trait(t) => {
            let mut t = t.clone();
            t.attrs.clear();
            t.vis = syn::Visibility::Inherited;
            for ti in t.items.iter_mut() {
                match ti {
                    syn::TraitItem::Fn(f) => {
                        f.attrs.clear();
                        f.default = None;
                        f.semi_token = Some(Default::default());
                    }
                    syn::TraitItem::Const(c) => {
                        c.attrs.clear();
                        c.default = None;
                    }
                    syn::TraitItem::Type(ty) => ty.attrs.clear(),
                    _ => {}
                }
            }
            let name = t.ident.to_string();
            (&item_vis(item), item_attrs(item), text(&t), Some(name))
        }
        I::Type(t) => {
            let mut t = t.clone();
            t.attrs.clear();
            t.vis = syn::Visibility::Inherited;
            let name = t.ident.to_string();
            (&item_vis(item), item_attrs(item), text(&t), Some(name))
        }
        I::Const(c) => (
            &c.vis,
            &c.attrs,
            format!("const {}: {}", c.ident, text(&c.ty)),
            None,
        ),
        I::Static(s) => (
            &s.vis,
            &s.attrs,
            format!("static {}: {}", s.ident, text(&s.ty)),
            None,
        ),
        I::Use(u) => (&u.vis, &u.attrs, text(&u.tree).replace(' ', ""), None),
        I::Macro(m) => {
            let exported = m.attrs.iter().any(|a| a.path().is_ident("macro_export"));
            if exported {
                if let Some(name) = &m.ident {
                    out.lines.insert(format!("macro {name}!"));
                }
            }
            return;
        }
        _ => return,
    };
    if !is_public(vis) || is_cfg_test(attrs) {
        return;
    }
    let prefix = match item {
        I::Use(_) => "pub use ".to_string(),
        _ => String::new(),
    };
    out.lines
        .insert(format!("{path}: {prefix}{}{line}", api_attrs(attrs)));
    if let Some(n) = type_name {
        out.public_types.insert(n);
    }
}

fn item_vis(item: &syn::Item) -> syn::Visibility {
    match item {
        syn::Item::Struct(s) => s.vis.clone(),
        syn::Item::Enum(e) => e.vis.clone(),
        syn::Item::Trait(t) => t.vis.clone(),
        syn::Item::Type(t) => t.vis.clone(),
        _ => syn::Visibility::Inherited,
    }
}

fn item_attrs(item: &syn::Item) -> &Vec<syn::Attribute> {
    match item {
        syn::Item::Struct(s) => &s.attrs,
        syn::Item::Enum(e) => &e.attrs,
        syn::Item::Trait(t) => &t.attrs,
        syn::Item::Type(t) => &t.attrs,
        _ => unreachable!(),
    }
}

/// The last identifier of a type (`Foo` of `crate::a::Foo<T>`).
fn type_ident(ty: &syn::Type) -> Option<String> {
    match ty {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        syn::Type::Reference(r) => type_ident(&r.elem),
        _ => None,
    }
}

/// An impl block of a public type: its trait (`impl Trait for Type`) or its public methods and
/// constants.
fn impl_lines(i: &syn::ItemImpl, path: &str, out: &mut Listing) {
    let Some(self_name) = type_ident(&i.self_ty) else {
        return;
    };
    // A blanket impl (`impl<T: Bound> Trait for T`) is listed when its trait is public.
    let blanket = i
        .generics
        .type_params()
        .any(|p| p.ident == self_name.as_str());
    let trait_public = i.trait_.as_ref().is_some_and(|(_, p, _)| {
        p.segments
            .last()
            .is_some_and(|s| out.public_types.contains(&s.ident.to_string()))
    });
    let trait_private = i.trait_.as_ref().is_some_and(|(_, p, _)| {
        p.segments
            .last()
            .is_some_and(|s| out.private_traits.contains(&s.ident.to_string()))
    });
    let listed = out.public_types.contains(&self_name) || (blanket && trait_public);
    if trait_private || !listed {
        return;
    }
    let generics = text(&i.generics);
    let head = match &i.trait_ {
        Some((bang, trait_path, _)) => {
            let neg = if bang.is_some() { "!" } else { "" };
            format!(
                "impl{generics} {neg}{} for {}",
                text(trait_path),
                text(&i.self_ty)
            )
        }
        None => format!("impl{generics} {}", text(&i.self_ty)),
    };
    let where_clause = i
        .generics
        .where_clause
        .as_ref()
        .map(|w| format!(" {}", text(w)))
        .unwrap_or_default();
    if i.trait_.is_some() {
        out.lines.insert(format!("{path}: {head}{where_clause}"));
        return;
    }
    for ii in &i.items {
        match ii {
            syn::ImplItem::Fn(f) if is_public(&f.vis) && !is_cfg_test(&f.attrs) => {
                out.lines.insert(format!(
                    "{path}: {head}{where_clause} {{ {} }}",
                    text(&f.sig)
                ));
            }
            syn::ImplItem::Const(c) if is_public(&c.vis) => {
                out.lines.insert(format!(
                    "{path}: {head} {{ const {}: {} }}",
                    c.ident,
                    text(&c.ty)
                ));
            }
            _ => {}
        }
    }
}

/// The listing of one crate, one item per line, sorted.
fn listing(krate: &str) -> String {
    let dir = root().join("crates").join(krate);
    let lib = dir.join("src/lib.rs");
    let src = std::fs::read_to_string(&lib).unwrap();
    let parsed = syn::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let name = format!("recallseg_{}", krate.replace('-', "_"));
    let mut out = Listing {
        lines: BTreeSet::new(),
        public_types: BTreeSet::new(),
        private_traits: BTreeSet::new(),
    };
    collect(&parsed.items, &name, &lib, &mut out, false);
    collect(&parsed.items, &name, &lib, &mut out, true);
    let mut s = format!(
        "# The public API of {name}, generated by xtask/tests/public_api.rs: do not edit.\n"
    );
    for l in &out.lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// FNV-1a 64 of the listing, as 16 hex digits.
fn fingerprint(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[test]
fn public_apis_are_listed_and_their_changes_in_the_changelogs() {
    let bless = std::env::var_os("RECALLSEG_BLESS_API").is_some();
    let mut problems = Vec::new();
    for krate in CRATES {
        let dir = root().join("crates").join(krate);
        let now = listing(krate);
        let file = dir.join("public-api.txt");
        let saved = std::fs::read_to_string(&file).unwrap_or_default();
        if now != saved {
            if bless {
                std::fs::write(&file, &now).unwrap();
            } else {
                let (old, new): (BTreeSet<&str>, BTreeSet<&str>) =
                    (saved.lines().collect(), now.lines().collect());
                let mut diff = String::new();
                for l in old.difference(&new) {
                    diff.push_str(&format!("\n  - {l}"));
                }
                for l in new.difference(&old) {
                    diff.push_str(&format!("\n  + {l}"));
                }
                problems.push(format!(
                    "crates/{krate}: the public API differs from public-api.txt:{diff}\n  \
                     if intended: RECALLSEG_BLESS_API=1 cargo test -p xtask --test public_api, \
                     and say what changed in crates/{krate}/CHANGELOG.md"
                ));
                continue;
            }
        }
        let fp = fingerprint(&now);
        let changelog = std::fs::read_to_string(dir.join("CHANGELOG.md")).unwrap_or_default();
        if !changelog.contains(&format!("API fingerprint: `{fp}`")) {
            problems.push(format!(
                "crates/{krate}: the public API (fingerprint {fp}) is not the one \
                 crates/{krate}/CHANGELOG.md describes: say what changed under \"Unreleased\" \
                 and put `API fingerprint: `{fp}`` there"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The listing reacts to what a user can call and to nothing else.
#[test]
fn the_listing_sees_signatures_not_bodies() {
    let file: syn::File = syn::parse_str(
        "/// doc\n#[derive(Debug)] pub struct A { pub x: f32, y: u8 }\n\
         impl A { pub fn f(&self, k: usize) -> u8 { 1 } fn private(&self) {} }\n\
         pub(crate) fn hidden() {}\n\
         #[cfg(test)] mod tests { pub fn t() {} }",
    )
    .unwrap();
    let mut out = Listing {
        lines: BTreeSet::new(),
        public_types: BTreeSet::new(),
        private_traits: BTreeSet::new(),
    };
    collect(
        &file.items,
        "c",
        Path::new("/nonexistent/lib.rs"),
        &mut out,
        false,
    );
    collect(
        &file.items,
        "c",
        Path::new("/nonexistent/lib.rs"),
        &mut out,
        true,
    );
    let lines: Vec<&str> = out.lines.iter().map(String::as_str).collect();
    assert_eq!(
        lines,
        [
            "c: # [derive (Debug)] struct A { pub x : f32 } /* private fields */",
            "c: impl A { fn f (& self , k : usize) -> u8 }",
        ]
    );
}

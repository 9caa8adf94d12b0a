//! Which handler answers a request path, decided in one place for HTTP/1.1, for h2
//! streams answered directly, and for every handler: the name checks (`deny_hidden`,
//! `deny_backup`) and the index file of a directory come before any handler is chosen.
//!
//! An index file is served through the route its own name matches, exactly as a
//! request for `/dir/index.php` would be: with `index = ["index.php"]` and a `.php`
//! FastCGI route, `GET /dir/` runs `/dir/index.php` (SCRIPT_NAME `/dir/index.php`,
//! REQUEST_URI `/dir/`), never sends its source as a static file.
//!
//! Then the site's two path policies: under a `no_scripts` prefix, a path a script
//! route would take is 403 (neither run nor sent as source); and a path that names
//! nothing in the tree goes to the `fallback` front controller, through its own route,
//! with the request as it came (REQUEST_URI, query, method, body).

use super::SiteState;
use super::static_files;
use crate::config::{Handler, RouteConfig, Site};
use crate::http::path;

pub(super) enum Target<'a> {
    /// Answered with this status by no handler: 400 for a path that does not
    /// normalise, 404 for a name the site does not serve (the same status as a missing
    /// file, so a probe learns nothing about what exists), 403 for a script where the
    /// site runs none (`no_scripts`).
    Refused(u16),
    /// A CGI, FastCGI or app route, for this normalised path (a directory's index
    /// file's, when that is what the route matched).
    Route(&'a RouteConfig, String),
    /// The static handler, for this normalised path. `index`: it still has to look
    /// for the directory's index file (only when no script route could claim one).
    Static { path: String, index: bool },
}

pub(super) fn resolve<'a>(site: &'a SiteState, raw_path: &str) -> Target<'a> {
    let Ok(path) = path::normalize(raw_path) else {
        return Target::Refused(400);
    };
    let target = choose(site, path);
    let missing = match (&target, &site.files) {
        (Target::Route(route, _), _) if route.handler == Handler::App => false,
        (Target::Route(_, path) | Target::Static { path, .. }, Ok(files)) => {
            site.config.fallback.is_some() && static_files::is_missing(files, path)
        }
        _ => false,
    };
    match &site.config.fallback {
        Some(fallback) if missing => page(site, fallback),
        _ => target,
    }
}

/// The target of a page the admin named (`fallback`, an error page): the route its
/// name matches, or the file itself. No index, no fallback of its own.
pub(super) fn page<'a>(site: &'a SiteState, path: &str) -> Target<'a> {
    match script_route(&site.config, path) {
        Some(_) if no_scripts(&site.config, path) => Target::Refused(403),
        Some(route) => Target::Route(route, path.to_string()),
        None => Target::Static {
            path: path.to_string(),
            index: false,
        },
    }
}

/// `path` lies where the site runs no scripts (`no_scripts`).
fn no_scripts(config: &Site, path: &str) -> bool {
    config
        .no_scripts
        .iter()
        .any(|p| path.starts_with(p.as_str()))
}

/// The target of a normalised path, before the fallback.
fn choose(site: &SiteState, path: String) -> Target<'_> {
    let config = &site.config;
    let deny = config.deny();
    if path::denied(&path, deny) {
        return Target::Refused(404);
    }
    if let Some(route) = script_route(config, &path) {
        // A script where none may run (an uploads directory) is neither run nor sent
        // as source: its name says what it is, and it is refused before any lookup.
        if no_scripts(config, &path) {
            return Target::Refused(403);
        }
        return Target::Route(route, path);
    }
    // Most sites have no script routes: the static handler finds the index itself.
    let scripts = config.routes.iter().any(|r| r.handler != Handler::Static);
    let files = match &site.files {
        Ok(files) if scripts && path.ends_with('/') => files,
        _ => return Target::Static { path, index: true },
    };
    match static_files::find_index(files, &path) {
        Some(index) if path::denied(&index, deny) => Target::Refused(404),
        Some(index) => match script_route(config, &index) {
            Some(_) if no_scripts(config, &index) => Target::Refused(403),
            Some(route) => Target::Route(route, index),
            None => Target::Static {
                path: index,
                index: false,
            },
        },
        None => Target::Static { path, index: false },
    }
}

/// The first route matching `path`, unless it is a static one (which serves the path
/// as a file, like no route at all).
fn script_route<'a>(config: &'a Site, path: &str) -> Option<&'a RouteConfig> {
    config
        .routes
        .iter()
        .find(|r| r.matches(path))
        .filter(|r| r.handler != Handler::Static)
}

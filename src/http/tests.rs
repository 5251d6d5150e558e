//! Unit tests of the parts of the drain that need no socket.

use http_body_util::{Empty, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::CONNECTION;

use super::drain::is_clients_last;

/// Whether a bodiless request with these `Connection` headers ends the client's input.
fn last(version: hyper::Version, connection: &[&str]) -> bool {
    let mut builder = Request::builder().version(version).uri("/");
    for value in connection {
        builder = builder.header(CONNECTION, *value);
    }
    is_clients_last(&builder.body(Empty::<Bytes>::new()).unwrap_or_default())
}

#[test]
fn a_close_asked_by_the_client_ends_its_input() {
    const HTTP_10: hyper::Version = hyper::Version::HTTP_10;
    const HTTP_11: hyper::Version = hyper::Version::HTTP_11;
    assert!(last(HTTP_11, &["close"]));
    assert!(last(HTTP_11, &["Upgrade, CLOSE"]));
    assert!(last(HTTP_11, &["te", "close"]));
    assert!(last(HTTP_10, &[]));
    assert!(!last(HTTP_10, &["keep-alive"]));
    assert!(!last(HTTP_11, &[]));
    assert!(!last(HTTP_11, &["keep-alive"]));
    assert!(!last(HTTP_11, &["closed"]));
    // A body may still be arriving: the close has to linger for it.
    let upload = Request::builder()
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap_or_default();
    assert!(!is_clients_last(&upload));
}

//! Who is calling, by network address: the socket's peer, or — only when
//! `TRUSTED_PROXY_HEADER` names one — the last hop a trusted reverse proxy
//! wrote into that header. Clients cannot choose their own bucket.

use std::future::{ready, Ready};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use actix_web::dev::Payload;
use actix_web::http::header::HeaderMap;
use actix_web::{web, FromRequest, HttpRequest};

use crate::state::AppState;

/// The client's address per the trusted-proxy rule. Never fails: a request
/// with no usable address at all is counted under 0.0.0.0 (one shared bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    pub fn ip(&self) -> IpAddr {
        self.0
    }

    /// The rate-limit subject, `ip:` + an IPv4 address as is, or an IPv6
    /// address by its /64, since one host is usually handed a whole /64 and
    /// can hop inside it. (The prefix keeps it apart from user subjects.)
    pub fn subject(&self) -> String {
        match self.0 {
            IpAddr::V4(v4) => format!("ip:{v4}"),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("ip:{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        }
    }
}

/// The client address: the last hop of `trusted_header` when it is configured
/// and present and parses, else the socket's peer, else 0.0.0.0.
pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted_header: Option<&str>) -> IpAddr {
    let from_proxy = trusted_header.and_then(|name| last_hop(headers, name));
    from_proxy.or(peer).map(|ip| ip.to_canonical()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The last address in the header, across repeated header lines. Only the
/// last one was written by our proxy; earlier ones are whatever the client sent.
fn last_hop(headers: &HeaderMap, name: &str) -> Option<IpAddr> {
    let value = headers.get_all(name).last()?.to_str().ok()?;
    parse_hop(value.rsplit(',').next()?.trim())
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

impl FromRequest for ClientAddr {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>();
        let trusted = state.and_then(|s| s.config.trusted_proxy_header.as_deref());
        let peer = req.peer_addr().map(|a| a.ip());
        ready(Ok(ClientAddr(resolve(peer, req.headers(), trusted))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::BROADCAST))
    }

    #[test]
    fn without_a_trusted_header_the_socket_peer_is_used_and_headers_ignored() {
        let h = headers(&[("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(resolve(Some(ip("10.0.0.1")), &h, None), ip("10.0.0.1"));
    }

    #[test]
    fn with_a_trusted_header_only_its_last_hop_counts() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.1.1.1"), ("x-forwarded-for", "7.7.7.7,  2.2.2.2 ")]);
        assert_eq!(resolve(Some(ip("10.0.0.1")), &h, Some("x-forwarded-for")), ip("2.2.2.2"));
        let h = headers(&[("x-real-ip", "[2001:db8::1]:443")]);
        assert_eq!(resolve(None, &h, Some("x-real-ip")), ip("2001:db8::1"));
    }

    #[test]
    fn a_missing_or_garbled_trusted_header_falls_back_to_the_peer() {
        let peer = Some(ip("10.0.0.1"));
        assert_eq!(resolve(peer, &headers(&[]), Some("x-forwarded-for")), ip("10.0.0.1"));
        let h = headers(&[("x-forwarded-for", "1.1.1.1, not-an-ip")]);
        assert_eq!(resolve(peer, &h, Some("x-forwarded-for")), ip("10.0.0.1"));
        assert_eq!(resolve(None, &headers(&[]), None), ip("0.0.0.0"));
    }

    #[test]
    fn subjects_group_ipv6_by_64_and_unmap_ipv4() {
        assert_eq!(ClientAddr(ip("2001:db8:1:2:3:4:5:6")).subject(), "ip:2001:db8:1:2::/64");
        assert_eq!(ClientAddr(resolve(Some(ip("::ffff:1.2.3.4")), &headers(&[]), None)).subject(), "ip:1.2.3.4");
    }
}

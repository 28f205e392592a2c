use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32`: the trusted proxies of
/// [`ClientIp`](super::ClientIp).
///
/// Parses `addr/prefix` or a bare address (a single host, `/32` or `/128`). Host bits
/// are cleared (`10.1.2.3/8` is `10.0.0.0/8`). IPv4-mapped IPv6 addresses
/// (`::ffff:10.0.0.1`) match IPv4 networks, as a dual-stack socket reports them.
///
/// ```
/// use tower_lb::sticky::Cidr;
///
/// let net: Cidr = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.20.30.40".parse().unwrap()));
/// assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<Cidr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with `prefix` leading bits (at most 32 for IPv4, 128 for
    /// IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrParseError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrParseError::new(Kind::Prefix));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Ok(Self { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrParseError::new(Kind::Addr))?;
        // A network given as IPv4-mapped IPv6 is the IPv4 network it maps.
        let (addr, offset) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix.is_some() => (IpAddr::V4(v4), 96),
                _ => (addr, 0),
            },
            IpAddr::V4(_) => (addr, 0),
        };
        let prefix = match prefix {
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
                    return Err(CidrParseError::new(Kind::Prefix));
                }
                let p: u8 = p.parse().map_err(|_| CidrParseError::new(Kind::Prefix))?;
                p.checked_sub(offset)
                    .ok_or(CidrParseError::new(Kind::Prefix))?
            }
        };
        Self::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a [`Cidr`] did not parse.
///
/// ```
/// use tower_lb::sticky::Cidr;
///
/// let err = "10.0.0.0/99".parse::<Cidr>().unwrap_err();
/// assert_eq!(err.to_string(), "invalid CIDR: prefix length out of range");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrParseError {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addr,
    Prefix,
}

impl CidrParseError {
    fn new(kind: Kind) -> Self {
        Self { kind }
    }
}

impl fmt::Display for CidrParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Addr => "invalid CIDR: not an IP address",
            Kind::Prefix => "invalid CIDR: prefix length out of range",
        })
    }
}

impl std::error::Error for CidrParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!("192.0.2.1".parse::<Cidr>().unwrap().prefix(), 32);
        assert_eq!("::1".parse::<Cidr>().unwrap().prefix(), 128);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix(), 0);
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!("2001:db8::/32"
            .parse::<Cidr>()
            .unwrap()
            .contains("2001:db8:1::9".parse().unwrap()));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "/",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "[::1]/8",
            "10.0.0.0/0008",
            " 10.0.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn families_do_not_mix() {
        let v4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(!v4.contains("2001:db8::1".parse().unwrap()));
        let v6: Cidr = "::/0".parse().unwrap();
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    }
}

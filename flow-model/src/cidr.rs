//! Address blocks as NetworkPolicies and flow filters write them.

use std::net::IpAddr;

/// An address or a CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().ok().filter(|prefix| *prefix <= max)?,
            None => max,
        };
        Some(Self { network, prefix })
    }

    /// How many addresses the block holds (all of IPv6 saturates).
    pub fn addresses(&self) -> u128 {
        let width: u32 = if self.network.is_ipv4() { 32 } else { 128 };
        1u128
            .checked_shl(width - u32::from(self.prefix))
            .unwrap_or(u128::MAX)
    }

    /// Whether `inner` lies entirely in this block.
    pub fn contains_block(&self, inner: &Self) -> bool {
        inner.prefix >= self.prefix && self.contains(inner.network)
    }

    /// Whether `address` lies in the block.
    pub fn contains(&self, address: IpAddr) -> bool {
        let (network, address, width) = match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => (
                u128::from(u32::from(network)),
                u128::from(u32::from(address)),
                32,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                (u128::from(network), u128::from(address), 128)
            }
            _ => return false,
        };
        let prefix = u32::from(self.prefix);
        prefix == 0 || network >> (width - prefix) == address >> (width - prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Cidr;

    #[test]
    fn cidrs_match_their_block_only() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.255.1".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(!block.contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd00:1::2".parse().unwrap())
        );
        assert!(
            Cidr::parse("10.1.0.2")
                .unwrap()
                .contains("10.1.0.2".parse().unwrap())
        );
        assert_eq!(Cidr::parse("10.1.0.0/16").unwrap().addresses(), 65_536);
        assert_eq!(Cidr::parse("10.1.0.2").unwrap().addresses(), 1);
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().addresses(), 1 << 32);
        assert_eq!(Cidr::parse("fd00::/64").unwrap().addresses(), 1 << 64);
        assert_eq!(Cidr::parse("::/0").unwrap().addresses(), u128::MAX);
        for bad in ["10.0.0.0/33", "10.0.0", "fd00::/129", "x/1", "10.0.0.0/"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }
}

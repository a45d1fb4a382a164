//! Per-seat iPXE scripts.
//!
//! iPXE splits a script line on whitespace and expands `${...}` anywhere in it, with no
//! quoting that works across the versions in the field, so values that go into a script
//! (IQNs, CHAP names and secrets, the seat name in messages) are checked against a
//! conservative character set instead of being escaped. A seat whose values fail the check
//! gets a script that says so rather than a script that would do something else.

use crate::{SeatBoot, mac_colon};

/// A value iPXE would split, expand or treat as an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field} contains characters an iPXE script cannot carry (allowed: printable ASCII except whitespace and $ \" ' \\ | & ; # {{ }})"
)]
pub struct UnsafeValue {
    pub field: &'static str,
}

fn check(field: &'static str, v: &str) -> Result<(), UnsafeValue> {
    let ok = !v.is_empty()
        && v.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'$' | b'"' | b'\'' | b'\\' | b'|' | b'&' | b';' | b'#' | b'{' | b'}'
                )
        });
    if ok {
        Ok(())
    } else {
        Err(UnsafeValue { field })
    }
}

/// The `iscsi:` root path iPXE's `sanboot` takes:
/// `iscsi:<servername>:<protocol>:<port>:<LUN>:<targetname>`; protocol empty (TCP), LUN 0.
pub fn san_uri(seat: &SeatBoot) -> String {
    format!(
        "iscsi:{}::{}:0:{}",
        seat.portal.ip(),
        seat.portal.port(),
        seat.target_iqn
    )
}

/// The boot script for a registered seat.
///
/// CHAP credentials and the initiator name are iPXE settings, not URI parts, because iPXE
/// copies settings into the iBFT that Windows reads. On failure the script explains, waits
/// and retries; Ctrl-B during the wait opens the iPXE shell.
pub fn seat_script(seat: &SeatBoot) -> Result<String, UnsafeValue> {
    check("seat name", &seat.seat)?;
    check("target IQN", &seat.target_iqn)?;
    check("initiator IQN", &seat.initiator_iqn)?;
    let mac = mac_colon(seat.mac);
    let uri = san_uri(seat);
    let mut s = String::new();
    s.push_str("#!ipxe\n");
    s.push_str(&format!(
        "echo Khoi: seat {} ({mac}) booting from {uri}\n",
        seat.seat
    ));
    s.push_str(&format!("set initiator-iqn {}\n", seat.initiator_iqn));
    if let Some((user, secret)) = &seat.chap {
        check("CHAP username", user)?;
        check("CHAP secret", secret)?;
        s.push_str(&format!("set username {user}\nset password {secret}\n"));
    } else {
        // Settings persist across a chained script: clear what an earlier boot left.
        s.push_str("clear username\nclear password\n");
    }
    if let Some((user, secret)) = &seat.mutual_chap {
        check("mutual CHAP username", user)?;
        check("mutual CHAP secret", secret)?;
        s.push_str(&format!(
            "set reverse-username {user}\nset reverse-password {secret}\n"
        ));
    } else {
        s.push_str("clear reverse-username\nclear reverse-password\n");
    }
    s.push_str(":retry\n");
    s.push_str(&format!("sanboot {uri} || goto failed\n"));
    s.push_str(":failed\n");
    s.push_str(&format!(
        "echo Khoi: could not boot seat {} from {uri} (is the Khoi server up and the seat enabled?)\n",
        seat.seat
    ));
    s.push_str("echo Retrying in 10 seconds - press Ctrl-B for the iPXE shell.\n");
    s.push_str("prompt --key 0x02 --timeout 10000 && shell || goto retry\n");
    s.push_str("goto retry\n");
    Ok(s)
}

/// The script of a seat in capture mode: load the capture environment from `base`
/// (`http://<host>:<port>`, as the seat reached this server) instead of booting the
/// seat's image. The environment finds its network settings, the seat's own lease from
/// iPXE, and the URL it reports to on its kernel command line.
pub fn capture_script(
    seat: &SeatBoot,
    capture: &crate::CaptureBoot,
    base: &str,
) -> Result<String, UnsafeValue> {
    check("seat name", &seat.seat)?;
    check("image name", &capture.image)?;
    check("capture token", &capture.token)?;
    check("server address", base)?;
    let mac = mac_colon(seat.mac);
    let url = format!("{base}/capture/{}", capture.token);
    let mut s = String::new();
    s.push_str("#!ipxe\n");
    s.push_str(&format!(
        "echo Khoi: seat {} ({mac}) is in capture mode: its local disk becomes image {}\n",
        seat.seat, capture.image
    ));
    s.push_str(":retry\n");
    s.push_str(&format!(
        "kernel {url}/vmlinuz initrd=initrd.gz khoi.capture={url} khoi.mac=${{netX/mac}} \
         khoi.ip=${{netX/ip}} khoi.netmask=${{netX/netmask}} khoi.gateway=${{netX/gateway}} \
         console=tty0 console=ttyS0,115200 panic=30 loglevel=3 || goto failed\n"
    ));
    s.push_str(&format!("initrd {url}/initrd.gz || goto failed\n"));
    s.push_str("boot || goto failed\n");
    s.push_str(":failed\n");
    s.push_str(
        "echo Khoi: could not load the capture environment (is it built? the seat page says).\n",
    );
    s.push_str("echo Retrying in 10 seconds - press Ctrl-B for the iPXE shell.\n");
    s.push_str("prompt --key 0x02 --timeout 10000 && shell || goto retry\n");
    s.push_str("goto retry\n");
    Ok(s)
}

/// The script for a MAC that is not registered: say so, wait, then power off (or leave
/// iPXE if this build lacks `poweroff`), so the machine does not loop on the network.
pub fn unknown_script(mac: [u8; 6]) -> String {
    let mac = mac_colon(mac);
    format!(
        "#!ipxe\n\
         echo this machine is not registered: {mac}\n\
         echo Ask the Khoi administrator to enrol this MAC address, then reboot.\n\
         sleep 60\n\
         poweroff || exit 1\n"
    )
}

/// The script when a boot cannot be offered right now (the state database failed): wait
/// and fetch the script again.
pub fn unavailable_script(mac: [u8; 6]) -> String {
    format!(
        "#!ipxe\n\
         echo Khoi: cannot start a boot for {} right now; rebooting in 10 seconds to try again.\n\
         sleep 10\n\
         reboot || exit 1\n",
        mac_colon(mac)
    )
}

/// The script for a seat whose settings cannot be put into a script.
pub fn config_error_script(mac: [u8; 6], err: &UnsafeValue) -> String {
    format!(
        "#!ipxe\n\
         echo Khoi: seat {} is misconfigured: {} has characters iPXE cannot use.\n\
         echo Fix it in the Khoi admin UI, then reboot.\n\
         sleep 60\n\
         exit 1\n",
        mac_colon(mac),
        err.field
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn seat() -> SeatBoot {
        SeatBoot {
            seat: "pc07".into(),
            mac: [0x52, 0x54, 0, 0x77, 0, 1],
            target_iqn: "iqn.2025-07.vn.khoi:seat.pc07".into(),
            portal: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 3260),
            initiator_iqn: crate::default_initiator_iqn("pc07"),
            chap: Some(("pc07".into(), "s3cret-pass-12".into())),
            mutual_chap: None,
            reserved_ip: None,
        }
    }

    #[test]
    fn san_uri_syntax() {
        assert_eq!(
            san_uri(&seat()),
            "iscsi:10.77.0.1::3260:0:iqn.2025-07.vn.khoi:seat.pc07"
        );
    }

    #[test]
    fn script_lines() {
        let s = seat_script(&seat()).unwrap();
        assert!(s.starts_with("#!ipxe\n"));
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.contains(&"set initiator-iqn iqn.2025-07.vn.khoi.initiator:pc07"));
        assert!(lines.contains(&"set username pc07"));
        assert!(lines.contains(&"set password s3cret-pass-12"));
        assert!(lines.contains(&"clear reverse-username"));
        assert!(lines.contains(
            &"sanboot iscsi:10.77.0.1::3260:0:iqn.2025-07.vn.khoi:seat.pc07 || goto failed"
        ));
        let mut mutual = seat();
        mutual.mutual_chap = Some(("khoi-target".into(), "an0ther-secret".into()));
        let s = seat_script(&mutual).unwrap();
        assert!(
            s.contains("\nset reverse-username khoi-target\nset reverse-password an0ther-secret\n")
        );
    }

    #[test]
    fn unsafe_values_rejected() {
        for bad in ["a b", "x${y}", "p|q", "", "semi;colon", "tab\t", "ü"] {
            let mut s = seat();
            s.chap = Some(("u".into(), bad.into()));
            assert_eq!(
                seat_script(&s),
                Err(UnsafeValue {
                    field: "CHAP secret"
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn capture_script_loads_the_environment_with_its_token() {
        let cb = crate::CaptureBoot {
            token: "Tok3n".into(),
            image: "win11".into(),
        };
        let s = capture_script(&seat(), &cb, "10.77.0.1:8080").unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.contains(&"initrd 10.77.0.1:8080/capture/Tok3n/initrd.gz || goto failed"));
        let kernel = lines
            .iter()
            .find(|l| l.starts_with("kernel "))
            .expect("kernel line");
        assert!(kernel.contains(" khoi.capture=10.77.0.1:8080/capture/Tok3n "));
        assert!(kernel.contains(" khoi.ip=${netX/ip} "));
        assert!(!s.contains("sanboot"), "the seat's image is not booted");
        let bad = crate::CaptureBoot {
            token: "a b".into(),
            image: "win11".into(),
        };
        assert_eq!(
            capture_script(&seat(), &bad, "h"),
            Err(UnsafeValue {
                field: "capture token"
            })
        );
    }

    #[test]
    fn unknown_message() {
        let s = unknown_script([0x52, 0x54, 0, 0x77, 0, 0xfe]);
        assert!(s.contains("echo this machine is not registered: 52:54:00:77:00:fe\n"));
        assert!(s.contains("poweroff"));
    }
}

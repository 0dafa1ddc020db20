//! A RabbitMQ virtual host per test, created through the management API and
//! deleted (with everything in it) when the test ends, pass or fail.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Management API of the local broker (enabled by scripts/ensure-services.sh).
fn management_addr() -> String {
    std::env::var("RABBITMQ_MANAGEMENT_ADDR").unwrap_or_else(|_| "127.0.0.1:15672".into())
}

fn broker_addr() -> String {
    std::env::var("RABBITMQ_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

fn credentials() -> (String, String) {
    (
        std::env::var("RABBITMQ_USER").unwrap_or_else(|_| "guest".into()),
        std::env::var("RABBITMQ_PASSWORD").unwrap_or_else(|_| "guest".into()),
    )
}

pub struct TestVhost {
    name: String,
    /// Users made for this vhost alone ([`TestVhost::amqp_url_with_password`]), deleted with it.
    users: std::sync::Mutex<Vec<String>>,
}

impl TestVhost {
    /// Creates `tollgate-test-<uuid>` and grants the test user full rights in it.
    pub fn create() -> Self {
        let name = format!("tollgate-test-{}", uuid::Uuid::new_v4().simple());
        let (user, _) = credentials();
        management("PUT", &format!("/api/vhosts/{name}"), "{}")
            .unwrap_or_else(|e| panic!("creating vhost {name}: {e}"));
        management(
            "PUT",
            &format!("/api/permissions/{name}/{user}"),
            r#"{"configure":".*","write":".*","read":".*"}"#,
        )
        .unwrap_or_else(|e| panic!("granting permissions on {name}: {e}"));
        Self {
            name,
            users: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// AMQP URL of this vhost on the real broker.
    pub fn amqp_url(&self) -> String {
        self.amqp_url_via(&broker_addr())
    }

    /// AMQP URL of this vhost reached through another address (a [`crate::TcpProxy`]).
    pub fn amqp_url_via(&self, addr: &str) -> String {
        let (user, password) = credentials();
        format!("amqp://{user}:{password}@{addr}/{}", self.name)
    }
}

impl TestVhost {
    /// AMQP URL of this vhost as a user of its own, made now with `password` and full
    /// rights in this vhost only: for a test that needs a password no other test uses
    /// (one that looks for it in logs). `password` must be URL-safe as it is.
    pub fn amqp_url_with_password(&self, password: &str) -> String {
        let user = format!("tollgate-test-{}", uuid::Uuid::new_v4().simple());
        management(
            "PUT",
            &format!("/api/users/{user}"),
            &format!(r#"{{"password":"{password}","tags":""}}"#),
        )
        .unwrap_or_else(|e| panic!("creating user {user}: {e}"));
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(user.clone());
        management(
            "PUT",
            &format!("/api/permissions/{}/{user}", self.name),
            r#"{"configure":".*","write":".*","read":".*"}"#,
        )
        .unwrap_or_else(|e| panic!("granting {user} permissions on {}: {e}", self.name));
        format!("amqp://{user}:{password}@{}/{}", broker_addr(), self.name)
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let users = std::mem::take(
            self.users
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for user in users {
            if let Err(e) = management("DELETE", &format!("/api/users/{user}"), "") {
                eprintln!("warning: could not delete test user {user}: {e}");
            }
        }
        if let Err(e) = management("DELETE", &format!("/api/vhosts/{}", self.name), "") {
            eprintln!("warning: could not delete test vhost {}: {e}", self.name);
        }
    }
}

/// One blocking HTTP/1.1 call to the management API. Blocking is deliberate: it
/// also runs from `Drop`, where no async runtime may be available.
fn management(method: &str, path: &str, body: &str) -> Result<(), String> {
    let (user, password) = credentials();
    let addr = management_addr();
    let mut stream = TcpStream::connect(&addr).map_err(|e| {
        format!(
            "RabbitMQ management API at {addr} unreachable ({e}); run scripts/ensure-services.sh"
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        base64(format!("{user}:{password}").as_bytes()),
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!(
            "{method} {path} answered: {}",
            response.lines().next().unwrap_or("")
        ))
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
    }
}

//! A PostgreSQL database per test, created empty and dropped when the test ends.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgPool};

/// Server the tests use: `TEST_DATABASE_URL`, else `DATABASE_URL`, else the local default.
/// Only scheme, credentials, host and port are taken from it; the database name is ours.
fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// (`scheme://userinfo@`, `host:port`) of a PostgreSQL URL.
fn split_url(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("URL has a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => (format!("{scheme}://{userinfo}@"), host.to_string()),
        None => (format!("{scheme}://"), authority.to_string()),
    }
}

fn server_options() -> PgConnectOptions {
    server_url()
        .parse::<PgConnectOptions>()
        .expect("a valid PostgreSQL URL")
        .database("postgres")
        .disable_statement_logging()
}

pub struct TestDatabase {
    name: String,
    options: PgConnectOptions,
    /// A login role made to own this database ([`TestDatabase::url_with_password`]),
    /// dropped with it.
    owner_role: std::sync::Mutex<Option<String>>,
}

impl TestDatabase {
    /// Creates `tollgate_test_<uuid>`.
    pub async fn create() -> Self {
        let name = format!("tollgate_test_{}", uuid::Uuid::new_v4().simple());
        let admin = server_options();
        let mut connection = sqlx::PgConnection::connect_with(&admin)
            .await
            .expect("PostgreSQL reachable (run scripts/ensure-services.sh)");
        // The name is ours (a UUID), never user input.
        sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut connection)
            .await
            .expect("creating the test database");
        connection.close().await.ok();
        Self {
            options: admin.clone().database(&name),
            name,
            owner_role: std::sync::Mutex::new(None),
        }
    }

    /// A URL for this database as a login role of its own, made now with `password` and
    /// given the database: for a test that needs a password no other test uses (one
    /// that looks for it in logs). `password` must be letters, digits and `-` or `_`.
    pub async fn url_with_password(&self, password: &str) -> String {
        assert!(
            password
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "a password this helper can quote: {password}"
        );
        let role = format!("{}_owner", self.name);
        let mut connection = sqlx::PgConnection::connect_with(&server_options())
            .await
            .expect("PostgreSQL reachable");
        // The role and database names are ours (a UUID); the password was checked above.
        for statement in [
            format!(r#"CREATE ROLE "{role}" LOGIN PASSWORD '{password}'"#),
            format!(r#"ALTER DATABASE "{}" OWNER TO "{role}""#, self.name),
        ] {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut connection)
                .await
                .expect("making the database's owner role");
        }
        connection.close().await.ok();
        *self
            .owner_role
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(role.clone());
        let (_, host) = split_url(&server_url());
        format!("postgres://{role}:{password}@{host}/{}", self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL for this database (what a service's `DATABASE_URL` would be).
    pub fn url(&self) -> String {
        let (prefix, host) = split_url(&server_url());
        format!("{prefix}{host}/{}", self.name)
    }

    /// The URL reached through another address (a [`crate::TcpProxy`]).
    pub fn url_via(&self, addr: &str) -> String {
        let (prefix, _) = split_url(&server_url());
        format!("{prefix}{addr}/{}", self.name)
    }

    /// `host:port` of the server, for a proxy to forward to.
    pub fn server_addr(&self) -> String {
        split_url(&server_url()).1
    }

    /// A small pool on this database, for the test's own checks.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect_with(self.options.clone())
            .await
            .expect("connecting to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context guarantee: use a private runtime on a thread.
        let name = self.name.clone();
        let role = self
            .owner_role
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let admin = server_options();
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut connection = sqlx::PgConnection::connect_with(&admin).await?;
                sqlx::query(AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .execute(&mut connection)
                .await?;
                if let Some(role) = role {
                    sqlx::query(AssertSqlSafe(format!(r#"DROP ROLE IF EXISTS "{role}""#)))
                        .execute(&mut connection)
                        .await?;
                }
                connection.close().await
            })
        })
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_split_into_credentials_and_address() {
        assert_eq!(
            super::split_url("postgres://u:p@db:5433/app?sslmode=require"),
            ("postgres://u:p@".to_string(), "db:5433".to_string())
        );
        assert_eq!(
            super::split_url("postgresql://localhost/app"),
            ("postgresql://".to_string(), "localhost".to_string())
        );
    }
}

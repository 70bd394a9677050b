//! Users in Postgres.

use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use crate::db::StoreError;

pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub phone: Option<&'a str>,
}

pub struct StoredUser {
    pub id: i64,
    pub password_hash: String,
}

/// Inserts the user; `Ok(None)` when the username is taken (an expected
/// conflict is a value, not an error).
pub async fn insert_user(db: &impl GenericClient, user: &NewUser<'_>) -> Result<Option<i64>, StoreError> {
    let stmt = db
        .prepare_cached("INSERT INTO users (username, password_hash, phone) VALUES ($1, $2, $3) RETURNING id")
        .await?;
    match db.query_one(&stmt, &[&user.username, &user.password_hash, &user.phone]).await {
        Ok(row) => Ok(Some(row.get(0))),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn find_by_username(db: &impl GenericClient, username: &str) -> Result<Option<StoredUser>, StoreError> {
    // A disabled account cannot log in: it looks like no account at all.
    let stmt =
        db.prepare_cached("SELECT id, password_hash FROM users WHERE username = $1 AND disabled_at IS NULL").await?;
    Ok(db.query_opt(&stmt, &[&username]).await?.map(|row| StoredUser { id: row.get(0), password_hash: row.get(1) }))
}

/// Whether any account (disabled ones too) has this name.
pub async fn username_taken(db: &impl GenericClient, username: &str) -> Result<bool, StoreError> {
    let stmt = db.prepare_cached("SELECT 1 FROM users WHERE username = $1").await?;
    Ok(db.query_opt(&stmt, &[&username]).await?.is_some())
}

pub async fn user_exists(db: &impl GenericClient, user_id: i64) -> Result<bool, StoreError> {
    let stmt = db.prepare_cached("SELECT 1 FROM users WHERE id = $1").await?;
    Ok(db.query_opt(&stmt, &[&user_id]).await?.is_some())
}

//! `GET /v1/openapi.json`: the committed OpenAPI 3.1 document (docs/openapi.json), served
//! as is. Public: it holds no secrets, and frontends generate clients from it. A test
//! checks every registered route is in it.

use actix_web::HttpResponse;

pub const DOCUMENT: &str = include_str!("../../../../docs/openapi.json");

pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT)
}

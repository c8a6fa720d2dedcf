// The OpenAPI page, from the vendored Swagger UI (no CDN; the page's policy allows no inline script).
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null });

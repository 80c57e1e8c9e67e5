// The API docs page (/docs): Swagger UI over this gateway's OpenAPI document. A file, not an inline script,
// so the page keeps a script-src 'self' policy.
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});

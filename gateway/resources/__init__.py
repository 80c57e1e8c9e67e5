"""The public API, one package per resource: its schemas, HTTP router and gRPC servicer side by side."""

//! The response half of an ext-proc stream: response headers and body from the model server,
//! model names rewritten back, usage read from JSON or SSE, the stream's load released at the end.

use super::*;

impl StreamState {
    pub(super) fn on_response_headers(&mut self, h: HttpHeaders) -> Answers {
        let headers = h.headers.map(|m| m.headers).unwrap_or_default();
        let get = |name: &str| {
            headers.iter().find(|hv| hv.key.eq_ignore_ascii_case(name)).map(|hv| {
                if hv.raw_value.is_empty() {
                    hv.value.clone()
                } else {
                    String::from_utf8_lossy(&hv.raw_value).into_owned()
                }
            })
        };
        if get(":status").or_else(|| get("status")).is_some_and(|s| s != "200") {
            self.picker.metrics.record_model_server_error(&self.incoming_model, &self.target_model);
            if let Some(f) = self.inflight.as_mut() {
                f.unlearnable();
            }
        }
        self.streaming_response = get("content-type").is_some_and(|ct| ct.contains("text/event-stream"));
        let mut set = vec![proto::header("x-went-into-resp-headers", b"true")];
        if self.picker.scheduler.config.served_verifier {
            let v = match &self.served {
                Some(s) => s.clone(),
                None => "fail: x-gateway-destination-endpoint-served not found in request metadata".into(),
            };
            set.push(proto::header("x-conformance-test-served-endpoint", v.as_bytes()));
        }
        if h.end_of_stream {
            self.finished = true;
        }
        Ok(vec![Ok(proto::response_headers_response(set))])
    }

    pub(super) fn on_response_body(&mut self, b: HttpBody) -> Answers {
        self.response_bytes += b.body.len() as u64;
        if self.streaming_response {
            if let Some(f) = self.inflight.as_mut().filter(|_| !b.body.is_empty()) {
                f.first_token();
            }
            if self.usage.is_none() {
                self.usage = usage_from_sse(&b.body);
            }
            let body = rewrite_model_back(&b.body, &self.target_model, &self.incoming_model).unwrap_or(b.body);
            let mut out = Vec::new();
            proto::body_responses(&body, b.end_of_stream, false, &mut out);
            if b.end_of_stream {
                self.finish_response();
            }
            return Ok(out.into_iter().map(Ok).collect());
        }
        if self.response_buffer.len() + b.body.len() > self.picker.settings.max_response_buffer_bytes {
            // Too large to buffer: pass through from here on, without usage.
            self.streaming_response = true;
            let mut body = std::mem::take(&mut self.response_buffer);
            body.extend_from_slice(&b.body);
            let mut out = Vec::new();
            proto::body_responses(&body, b.end_of_stream, false, &mut out);
            return Ok(out.into_iter().map(Ok).collect());
        }
        self.response_buffer.extend_from_slice(&b.body);
        if !b.end_of_stream {
            return Ok(Vec::new());
        }
        Ok(self.flush_response(true))
    }

    pub(super) fn flush_response(&mut self, end_of_stream: bool) -> Vec<Result<ProcessingResponse, Status>> {
        if self.streaming_response && self.response_buffer.is_empty() {
            self.finish_response();
            return Vec::new();
        }
        let body = std::mem::take(&mut self.response_buffer);
        self.usage = self.usage.or_else(|| usage_from_json(&body));
        let body = rewrite_model_back(&body, &self.target_model, &self.incoming_model).unwrap_or(body);
        let mut out = Vec::new();
        proto::body_responses(&body, end_of_stream, false, &mut out);
        self.finish_response();
        out.into_iter().map(Ok).collect()
    }

    pub(super) fn finish_response(&mut self) {
        self.finished = true;
        if let (Some(u), Some(series)) = (self.usage, &self.series) {
            series.record_usage(u);
        }
        if let (Some(_), Some(series)) = (self.running.take(), &self.series) {
            series.record_response(self.received.elapsed(), self.response_bytes, self.usage);
        }
        self.inflight = None;
    }
}

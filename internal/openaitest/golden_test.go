package openaitest

// golden are whole answers, with what is random or time-dependent
// normalized (see normalize), to a request for the script of TestGolden:
// text "Hi <é>", one tool call in two argument pieces, usage 9+4.
var golden = []struct {
	name        string
	dialect     Dialect
	status      int
	body        string
	contentType string
	want        string
}{
	{name: "openai stream without usage", dialect: OpenAI, body: chatBody, contentType: "text/event-stream; charset=utf-8", want: `data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"content":" <é>"},"logprobs":null,"finish_reason":null}],"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}],"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"obfuscation":"X"}

data: [DONE]

`},
	{name: "openai stream", dialect: OpenAI, body: usageBody, contentType: "text/event-stream; charset=utf-8", want: `data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"content":" <é>"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null,"obfuscation":"X"}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","service_tier":"default","system_fingerprint":"FP","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"X"}

data: [DONE]

`},
	{name: "openai plain", dialect: OpenAI, body: plainBody, contentType: "application/json", want: `{
  "id": "chatcmpl-ID",
  "object": "chat.completion",
  "created": 0,
  "model": "test-model",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hi <é>",
        "tool_calls": [
          {
            "id": "call_1",
            "type": "function",
            "function": {
              "name": "get_weather",
              "arguments": "{\"city\":\"Paris\"}"
            }
          }
        ],
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "tool_calls"
    }
  ],
  "usage": {
    "prompt_tokens": 9,
    "completion_tokens": 4,
    "total_tokens": 13,
    "prompt_tokens_details": {
      "cached_tokens": 0,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default",
  "system_fingerprint": "FP"
}
`},
	{name: "openai 429", dialect: OpenAI, status: 429, body: chatBody, contentType: "application/json", want: `{
    "error": {
        "message": "Rate limit reached for requests. Please try again in 1s.",
        "type": "requests",
        "param": null,
        "code": "rate_limit_exceeded"
    }
}
`},
	{name: "vllm stream", dialect: VLLM, body: usageBody, contentType: "text/event-stream; charset=utf-8", want: `data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","choices":[{"index":0,"delta":{"content":" <é>"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_1","type":"function","index":0,"function":{"name":"get_weather"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":"tool_calls","stop_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","choices":[],"usage":{"prompt_tokens":9,"total_tokens":13,"completion_tokens":4}}

data: [DONE]

`},
	{name: "vllm plain", dialect: VLLM, body: plainBody, contentType: "application/json", want: `{"id":"chatcmpl-ID","object":"chat.completion","created":0,"model":"test-model","choices":[{"index":0,"message":{"role":"assistant","reasoning_content":null,"content":"Hi <é>","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"logprobs":null,"finish_reason":"tool_calls","stop_reason":null}],"usage":{"prompt_tokens":9,"total_tokens":13,"completion_tokens":4,"prompt_tokens_details":null},"prompt_logprobs":null}`},
	{name: "vllm 429", dialect: VLLM, status: 429, body: chatBody, contentType: "application/json", want: `{"error":{"message":"Too Many Requests","type":"TooManyRequestsError","param":null,"code":429}}`},
	{name: "llama.cpp stream", dialect: LlamaCpp, body: usageBody, contentType: "text/event-stream", want: `data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":0,"id":"chatcmpl-ID","model":"test-model","system_fingerprint":"FP","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hi"}}],"created":0,"id":"chatcmpl-ID","model":"test-model","system_fingerprint":"FP","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" <é>"}}],"created":0,"id":"chatcmpl-ID","model":"test-model","system_fingerprint":"FP","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}],"created":0,"id":"chatcmpl-ID","model":"test-model","system_fingerprint":"FP","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}],"created":0,"id":"chatcmpl-ID","model":"test-model","system_fingerprint":"FP","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}],"created":0,"id":"chatcmpl-ID","model":"test-model","system_fingerprint":"FP","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":"tool_calls","index":0,"delta":{}}],"created":0,"id":"chatcmpl-ID","model":"test-model","system_fingerprint":"FP","object":"chat.completion.chunk"}

data: {"choices":[],"created":0,"id":"chatcmpl-ID","model":"test-model","system_fingerprint":"FP","object":"chat.completion.chunk","usage":{"completion_tokens":4,"prompt_tokens":9,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0}},"timings":{"cache_n":0,"prompt_n":9,"prompt_ms":3.25,"prompt_per_token_ms":0.3611111111111111,"prompt_per_second":2769.230769230769,"predicted_n":4,"predicted_ms":51,"predicted_per_token_ms":12.75,"predicted_per_second":78.43137254901961}}

data: [DONE]

`},
	{name: "llama.cpp plain", dialect: LlamaCpp, body: plainBody, contentType: "application/json; charset=utf-8", want: `{"choices":[{"finish_reason":"tool_calls","index":0,"message":{"role":"assistant","content":"Hi <é>","tool_calls":[{"type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"},"id":"call_1"}]}}],"created":0,"model":"test-model","system_fingerprint":"FP","object":"chat.completion","usage":{"completion_tokens":4,"prompt_tokens":9,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0}},"id":"chatcmpl-ID","timings":{"cache_n":0,"prompt_n":9,"prompt_ms":3.25,"prompt_per_token_ms":0.3611111111111111,"prompt_per_second":2769.230769230769,"predicted_n":4,"predicted_ms":51,"predicted_per_token_ms":12.75,"predicted_per_second":78.43137254901961}}`},
	{name: "llama.cpp 429", dialect: LlamaCpp, status: 429, body: chatBody, contentType: "application/json; charset=utf-8", want: `{"error":{"code":429,"message":"Too Many Requests","type":"server_error"}}`},
	{name: "ollama stream", dialect: Ollama, body: usageBody, contentType: "text/event-stream", want: `data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":" \u003cé\u003e"},"finish_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":null}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"tool_calls"}]}

data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":0,"model":"test-model","system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}

data: [DONE]

`},
	{name: "ollama plain", dialect: Ollama, body: plainBody, contentType: "application/json", want: `{"id":"chatcmpl-ID","object":"chat.completion","created":0,"model":"test-model","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \u003cé\u003e","tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}
`},
	{name: "ollama 429", dialect: Ollama, status: 429, body: chatBody, contentType: "application/json", want: `{"error":{"message":"Too Many Requests","type":"api_error","param":null,"code":null}}
`},
}

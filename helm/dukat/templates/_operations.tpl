{{/* Keep-alive, loaded-model cap, memory budget: the worker hosts apply them (they own their workers). */}}
{{- define "dukat.operationsEnv" -}}
- name: DUKAT_KEEP_ALIVE
  value: {{ .Values.operations.keepAlive | toString | quote }}
- name: DUKAT_MAX_LOADED_MODELS
  value: {{ .Values.operations.maxLoadedModels | int | toString | quote }}
- name: DUKAT_HOST_MEMORY_BYTES
  value: {{ .Values.operations.hostMemoryBytes | int64 | toString | quote }}
- name: DUKAT_KV_CACHE_TOKENS
  value: {{ .Values.operations.kvCacheTokens | int | toString | quote }}
{{- end -}}

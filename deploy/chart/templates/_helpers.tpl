{{/*
Labels of every object: deploy/base's (app.kubernetes.io/part-of) and Helm's standard ones.
*/}}
{{- define "drainer.labels" -}}
app.kubernetes.io/part-of: drainer
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
The pods' labels, and the Service's and the Deployment's selector.
*/}}
{{- define "drainer.selector" -}}
app.kubernetes.io/name: drainer
app.kubernetes.io/component: server
{{- end -}}

{{/*
drainer's image, also the mover Jobs'.
*/}}
{{- define "drainer.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
Whether the ledger is PostgreSQL (several replicas) rather than SQLite on a claim.
*/}}
{{- define "drainer.shared" -}}
{{- if .Values.database.urlSecret }}true{{ end -}}
{{- end -}}

{{/*
The mover settings that are set (`movers` values), as environment variables.
*/}}
{{- define "drainer.moverEnv" -}}
{{- $m := .Values.movers -}}
{{- $env := dict
  "DRAINER_MOVER_IDENTITY" $m.identity
  "DRAINER_POD_SECURITY_DEFAULT" $m.podSecurityDefault
  "DRAINER_MOVER_CPU" $m.cpu
  "DRAINER_MOVER_MEMORY" $m.memory
  "DRAINER_MOVER_DEADLINE" (toString (default "" $m.deadlineSeconds))
  "DRAINER_MOVER_KEEP_FAILED" (toString (default "" $m.keepFailedSeconds))
  "DRAINER_MOVER_DATA_PATH" $m.dataPath
-}}
{{- if $m.nodeSelector }}
{{- $pairs := list }}
{{- range $k, $v := $m.nodeSelector }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}
{{- $_ := set $env "DRAINER_MOVER_NODE_SELECTOR" (join "," $pairs) }}
{{- end }}
{{- if $m.tolerations }}
{{- $_ := set $env "DRAINER_MOVER_TOLERATIONS" (toJson $m.tolerations) }}
{{- end }}
{{- range $name := keys $env | sortAlpha }}
{{- with get $env $name }}
- name: {{ $name }}
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

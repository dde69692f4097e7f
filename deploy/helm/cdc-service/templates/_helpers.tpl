{{/* Labels every object carries. */}}
{{- define "cdc.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The labels that tell a release's pods apart from others' (with a component). */}}
{{- define "cdc.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* An object's name: the release, then a pipeline or job name made a DNS label. */}}
{{- define "cdc.name" -}}
{{- printf "%s-%s" .root.Release.Name (.name | lower | replace "_" "-") -}}
{{- end }}

{{- define "cdc.env" -}}
{{- required "env is not set: install with -f values-dev.yaml or -f values-prod.yaml" .Values.env -}}
{{- end }}

{{- define "cdc.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end }}

{{/* Environment variables from the Secrets of the groups a workload names (`secrets`). */}}
{{- define "cdc.secretEnv" -}}
{{- $root := .root -}}
{{- range $group := .groups }}
{{- $refs := required (printf "secrets.%s is not defined" $group) (index $root.Values.secrets $group) }}
{{- range $name := keys $refs | sortAlpha }}
{{- $ref := index $refs $name }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef: {name: {{ $ref.secret }}, key: {{ $ref.key }}}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes of a workload: the config file (when given) and, when asked, the checkpoints. */}}
{{- define "cdc.volumes" -}}
{{- if .root.Values.config.file }}
- name: config
  configMap: {name: {{ .root.Release.Name }}-config}
{{- end }}
{{- if .checkpoints }}
- name: checkpoints
  persistentVolumeClaim: {claimName: {{ .root.Values.checkpoints.claimName }}}
{{- end }}
{{- end }}

{{- define "cdc.volumeMounts" -}}
{{- if .root.Values.config.file }}
- {name: config, mountPath: {{ .root.Values.image.configDir }}, readOnly: true}
{{- end }}
{{- if .checkpoints }}
- {name: checkpoints, mountPath: {{ .root.Values.checkpoints.mountPath }}}
{{- end }}
{{- end }}

{{/* The config files' checksum: a changed file changes the pod spec, so the Spark Operator
resubmits the application and it starts with the new config. */}}
{{- define "cdc.configChecksum" -}}
{{- if .Values.config.file }}
checksum/config: {{ print .Values.config.file "\n---\n" .Values.config.pipelines | sha256sum }}
{{- end }}
{{- end }}

{{- define "cdc.podSecurityContext" -}}
runAsUser: {{ .Values.image.uid }}
runAsNonRoot: true
fsGroup: {{ .Values.image.uid }}
{{- end }}

{{/* Spark properties of an application: the image's JARs on both classpaths, the chart's
and the workload's properties, and the OpenLineage Spark agent's JAR on the driver's (the
service attaches the agent to its runs itself, with the transport of the config's `lineage:`
section: no spark.extraListeners, no transport credentials in the Spark properties). */}}
{{- define "cdc.sparkConf" -}}
{{- $values := .root.Values -}}
{{- $classpath := printf "%s/spark/*:%s/s3/*" $values.image.jarsDir $values.image.jarsDir -}}
{{- $conf := merge (dict) (.extra | default dict) $values.sparkConf -}}
{{- $driver := $classpath -}}
{{- with $values.openlineage.agentJar }}
{{- $driver = printf "%s:%s" $classpath . }}
{{- end }}
{{- $_ := set $conf "spark.driver.extraClassPath" $driver }}
{{- $_ := set $conf "spark.executor.extraClassPath" $classpath }}
{{- range $key := keys $conf | sortAlpha }}
{{ $key }}: {{ index $conf $key | toString | quote }}
{{- end }}
{{- end }}

{{/* The part of a SparkApplication spec its streaming and scheduled uses share. */}}
{{- define "cdc.sparkApplicationSpec" -}}
{{- $root := .root -}}
type: Python
mode: cluster
image: {{ include "cdc.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
mainApplicationFile: local://{{ $root.Values.image.home }}/{{ .file }}
arguments: {{ toJson .arguments }}
sparkVersion: {{ $root.Values.sparkVersion | quote }}
sparkConf:
  {{- include "cdc.sparkConf" (dict "root" $root "extra" .sparkConf) | trim | nindent 2 }}
driver:
  cores: {{ .driver.cores }}
  memory: {{ .driver.memory }}
  serviceAccount: {{ $root.Values.serviceAccountName }}
  labels:
    {{- include "cdc.selectorLabels" $root | nindent 4 }}
    {{- with .labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with include "cdc.configChecksum" $root }}
  annotations:
    {{- . | trim | nindent 4 }}
  {{- end }}
  podSecurityContext:
    {{- include "cdc.podSecurityContext" $root | nindent 4 }}
  {{- with .ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "cdc.secretEnv" (dict "root" $root "groups" .secrets) }}
  env:
    {{- . | trim | nindent 4 }}
  {{- end }}
  {{- with include "cdc.volumeMounts" (dict "root" $root "checkpoints" .checkpoints) }}
  volumeMounts:
    {{- . | trim | nindent 4 }}
  {{- end }}
executor:
  instances: {{ .executor.instances }}
  cores: {{ .executor.cores }}
  memory: {{ .executor.memory }}
  serviceAccount: {{ $root.Values.serviceAccountName }}
  podSecurityContext:
    {{- include "cdc.podSecurityContext" $root | nindent 4 }}
{{- with include "cdc.volumes" (dict "root" $root "checkpoints" .checkpoints) }}
volumes:
  {{- . | trim | nindent 2 }}
{{- end }}
{{- end }}

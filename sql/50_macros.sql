-- attr_text(value): any typed attribute value as text, for filters and display:
--     attr_text(attributes['gen_ai.request.model'])    attr_text(resource_attributes['host.name'])
CREATE OR REPLACE MACRO attr_text(v) AS
    coalesce(v.str, CAST(v.int AS VARCHAR), CAST(v.double AS VARCHAR), CAST(v.bool AS VARCHAR), v.json,
             CAST(base64(v.bytes) AS VARCHAR));

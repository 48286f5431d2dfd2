# Inference image template, read by providers/clients/images.py (render_dockerfile).
# The environment (base + venv with the serving runtime and the user's wheels) is
# a cached dependency image, built once per resolved wheel set with no layer that
# holds deleted files; this file adds only the launcher and the source on top, so
# a warm build is a few small layers. The model is not baked in: it is
# bind-mounted read-only at run time and AZUREML_MODEL_DIR points at it.
FROM {{ENV_IMAGE}}
{{EXTRA_STEPS}}
# Our launcher: azmlinfsrv, with schema-rejected input answered 400 (runtime/mldeploy_serving.py).
COPY mldeploy/ /opt/mldeploy/

# PATH leads to /opt/azureml-env/bin already (set in the environment image).
ENV PYTHONPATH=/opt/mldeploy \
    PYTHONUNBUFFERED=1 \
    AML_APP_ROOT=/var/azureml-app \
    AZUREML_SOURCE_DIRECTORY=/var/azureml-app \
    AZUREML_ENTRY_SCRIPT={{ENTRY_SCRIPT}}

COPY app/ /var/azureml-app/
WORKDIR /var/azureml-app
EXPOSE 5001
CMD ["python", "-m", "mldeploy_serving", "--entry_script", "/var/azureml-app/{{ENTRY_SCRIPT}}", "--port", "5001"]

from django.http import HttpResponse
from django.templatetags.static import static
from django.urls import path


def index(request):
    return HttpResponse(f'<link rel="stylesheet" href="{static("site.css")}"><p>Hello from Django</p>')


urlpatterns = [path("", index)]
